"""ToAPIsAdapter's create and status calls over the production transport (aiohttp), against a real HTTP server:
the adapter hands them to aiohttp's session itself, skipping httpx's request and response objects. Every answer and
every failure must come out exactly as through the transport's httpx interface, which the adapter still uses once an
instrumentation (tracing) has wrapped the transport."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from httpx_aiohttp import AiohttpTransport

from app.core.errors import GatewayError, UpstreamRejected
from app.upstream.base import UpstreamTask
from app.upstream.toapis import ToAPIsAdapter, build_http_client, build_transport

KEY = "up-key-123"
UA = "seedream-gateway-test/9.9"
TASK: dict[str, Any] = {
    "id": "task_img_abc123",
    "status": "completed",
    "progress": 100,
    "created_at": 1703884800,
    "result": {"data": [{"url": "https://cdn.example/fox.png"}]},
}
REFUSED = {"error": {"code": "rate_limited", "message": "slow down", "type": "rate_limit_error"}}


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A small upstream on a free port; what each request carried is recorded."""
    seen: list[dict[str, Any]] = []

    async def create(request: web.Request) -> web.Response:
        seen.append({"headers": dict(request.headers), "body": await request.read(), "method": request.method})
        return web.json_response({**TASK, "status": "queued", "progress": 0})

    async def status(request: web.Request) -> web.StreamResponse:
        seen.append({"headers": dict(request.headers), "method": request.method})
        match request.match_info["task_id"]:
            case "limited":
                return web.json_response(REFUSED, status=429, headers={"Retry-After": "7", "X-Other": "no"})
            case "broken":
                return web.Response(status=503, text="down")
            case "unauthorized":
                return web.json_response({"error": {"message": "bad key"}}, status=401)
            case "not-json":
                return web.Response(text="oops")
            case "slow":
                await asyncio.sleep(5)
            case "gzipped":
                return web.Response(
                    body=gzip.compress(json.dumps(TASK).encode()),
                    headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
                )
        return web.json_response(TASK)

    app = web.Application()
    app.router.add_post("/v1/images/generations", create)
    app.router.add_get("/v1/images/generations/{task_id}", status)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def make_adapter(base: str, *, wrapped: bool) -> tuple[ToAPIsAdapter, AiohttpTransport]:
    transport = build_transport(4)
    assert isinstance(transport, AiohttpTransport)
    if wrapped:  # as an instrumentation leaves it: the method replaced on the instance
        transport.handle_async_request = transport.handle_async_request  # type: ignore[method-assign]
    client = build_http_client(base + "/", user_agent=UA, timeout_s=0.5, connect_timeout_s=1.0, transport=transport)
    return ToAPIsAdapter(client, transport), transport


async def outcome(call: Callable[[], Awaitable[UpstreamTask]]) -> Any:
    """What a call gives: its task, or its failure as the gateway will answer it."""
    try:
        return await call()
    except GatewayError as e:
        headers = e.headers if isinstance(e, UpstreamRejected) else None
        return (type(e).__name__, e.status_code, e.code, e.message, headers)


async def both_ways(base: str, call: Callable[[ToAPIsAdapter], Awaitable[UpstreamTask]]) -> list[Any]:
    """What `call` gives the direct way (aiohttp's session), then through the transport's httpx interface."""
    results = []
    for wrapped in (False, True):
        adapter, _ = make_adapter(base, wrapped=wrapped)
        try:
            results.append(await outcome(lambda: call(adapter)))  # noqa: B023 - awaited at once
        finally:
            await adapter.aclose()
    return results


@pytest.mark.parametrize("task_id", ["done", "gzipped", "limited", "broken", "unauthorized", "not-json", "slow"])
async def test_a_status_call_comes_out_the_same_both_ways(
    upstream: tuple[str, list[dict[str, Any]]], task_id: str
) -> None:
    direct, through_httpx = await both_ways(upstream[0], lambda adapter: adapter.get(KEY, task_id))
    assert direct == through_httpx
    if task_id in ("done", "gzipped"):
        assert isinstance(direct, UpstreamTask) and direct.urls == ["https://cdn.example/fox.png"]
    if task_id == "limited":
        assert direct[0] == "UpstreamRejected" and direct[1] == 429 and direct[4] == {"retry-after": "7"}  # only these
    if task_id == "slow":
        assert direct[0] == "UpstreamTimeout"


async def test_the_create_call_sends_the_same_request_both_ways(upstream: tuple[str, list[dict[str, Any]]]) -> None:
    base, seen = upstream
    body = {"model": "doubao-seedream-4-0", "prompt": "a red fox", "n": 2}
    tasks = await both_ways(base, lambda adapter: adapter.create(KEY, body))
    assert isinstance(tasks[0], UpstreamTask) and tasks[0] == tasks[1]
    direct, through_httpx = seen
    assert json.loads(direct["body"]) == json.loads(through_httpx["body"]) == body
    for sent in (direct, through_httpx):
        headers = {k.lower(): v for k, v in sent["headers"].items()}
        assert headers["authorization"] == f"Bearer {KEY}"
        assert headers["user-agent"] == UA
        assert headers["accept"] == "application/json"
        assert headers["content-type"] == "application/json"
        assert headers["x-request-id"]
    keys = [{k.lower() for k in sent["headers"]} - {"x-request-id"} for sent in seen]
    assert keys[0] == keys[1]  # no header more or less


async def test_the_direct_way_is_taken_unless_the_transport_is_wrapped(
    upstream: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = upstream
    calls = 0
    original = AiohttpTransport.handle_async_request

    async def counted(self: AiohttpTransport, request: Any) -> Any:
        nonlocal calls
        calls += 1
        return await original(self, request)

    monkeypatch.setattr(AiohttpTransport, "handle_async_request", counted)
    direct, through_httpx = await both_ways(base, lambda adapter: adapter.get(KEY, "done"))
    assert isinstance(direct, UpstreamTask) and direct == through_httpx
    assert calls == 1  # the wrapped transport's call only


async def test_an_upstream_nobody_listens_on_is_unavailable_both_ways() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = await both_ways(f"http://127.0.0.1:{port}", lambda adapter: adapter.get(KEY, "done"))
    assert results[0] == results[1]
    assert results[0][0] == "UpstreamUnavailable"
