"""ToAPIsAdapter against a real HTTP server on loopback (aiohttp's own): what each call sends, how each answer is
read, and how each failure is classified. The adapter's one session is aiohttp's, which nothing can mock in process,
so every failure here is a real one: a refused connection, a full pool, a slow or vanishing server."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from app.core.errors import GatewayError, UpstreamRejected, UpstreamUnavailable
from app.upstream.base import UploadedFile, UploadRefused
from app.upstream.toapis import KEEPALIVE_S, ToAPIsAdapter, build_session

KEY = "up-key-123"
UA = "seedream-gateway-test/9.9"
READ_TIMEOUT_S = 0.3
CONNECT_TIMEOUT_S = 0.3
CREATED = {
    "id": "task_img_abc123def456",
    "object": "generation.task",
    "model": "doubao-seedream-4-0",
    "status": "queued",
    "progress": 0,
    "created_at": 1703884800,
    "metadata": {},
}
CREATE_BODY = {
    "model": "doubao-seedream-4-0",
    "prompt": "a red fox",
    "size": "16:9",
    "n": 2,
    "metadata": {"resolution": "4K", "sequential_image_generation": "auto"},
}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
UPLOADED = {
    "success": True,
    "message": "",
    "data": {
        "id": "upload_abc12345",
        "url": "https://files.example/uploads/1.jpg",
        "mime_type": "image/png",
        "size": 89234,
    },
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A server on a free loopback port: every request is recorded, then answered by `handler`."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set by the first request
    handler: Handler | None = None

    def answer(self, status: int = 200, *, json_body: Any = None, text: str | None = None, **headers: str) -> None:
        async def handler(_: web.Request) -> web.StreamResponse:
            if json_body is not None:
                return web.json_response(json_body, status=status, headers=headers)
            return web.Response(status=status, text=text or "", headers=headers)

        self.handler = handler


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    found = Upstream()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        found.seen.append(Seen(request.method, request.path, headers, body))
        found.arrived.set()
        assert found.handler is not None, "the test set no answer"
        return await found.handler(request)

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield found
    finally:
        await runner.cleanup()


def make_adapter(base_url: str, *, max_connections: int = 4, timeout_s: float = READ_TIMEOUT_S) -> ToAPIsAdapter:
    session = build_session(
        user_agent=UA, timeout_s=timeout_s, connect_timeout_s=CONNECT_TIMEOUT_S, max_connections=max_connections
    )
    return ToAPIsAdapter(session, base_url + "/")  # a trailing slash makes no double slash


@pytest.fixture
async def adapter(upstream: Upstream) -> AsyncIterator[ToAPIsAdapter]:
    made = make_adapter(upstream.url)
    yield made
    await made.aclose()


# --- create / get ---------------------------------------------------------------------------------------


async def test_create_sends_user_agent_bearer_and_the_body(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    upstream.answer(json_body=CREATED)

    task = await adapter.create(KEY, CREATE_BODY)

    [sent] = upstream.seen
    assert (sent.method, sent.path) == ("POST", "/v1/images/generations")
    assert sent.headers["user-agent"] == UA
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept"] == "application/json"
    assert sent.headers["x-request-id"]
    assert json.loads(sent.body) == CREATE_BODY
    assert (task.id, task.status, task.progress) == ("task_img_abc123def456", "queued", 0)


async def test_get_reads_the_task(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    upstream.answer(
        json_body={
            "id": "img_5b8b",
            "status": "completed",
            "progress": 100,
            "result": {"type": "image", "data": [{"url": "https://files.example/1.jpg"}]},
        }
    )

    task = await adapter.get(KEY, "img_5b8b")

    [sent] = upstream.seen
    assert (sent.method, sent.path, sent.body) == ("GET", "/v1/images/generations/img_5b8b", b"")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["user-agent"] == UA
    assert "content-type" not in sent.headers
    assert task.status == "completed"
    assert task.urls == ["https://files.example/1.jpg"]


async def test_a_compressed_answer_is_read(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    task = {"id": "img_1", "status": "completed", "result": {"data": [{"url": "https://cdn.example/fox.png"}]}}

    async def gzipped(_: web.Request) -> web.StreamResponse:
        body = gzip.compress(json.dumps(task).encode())
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    upstream.handler = gzipped

    assert (await adapter.get(KEY, "img_1")).urls == ["https://cdn.example/fox.png"]


async def test_redirects_are_not_followed(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    upstream.answer(307, text="", Location="/elsewhere")

    with pytest.raises(UpstreamUnavailable):  # a 3xx is no task: an unusable answer
        await adapter.create(KEY, CREATE_BODY)

    assert [s.path for s in upstream.seen] == ["/v1/images/generations"]


# --- 4xx: passed through --------------------------------------------------------------------------------


async def test_4xx_is_rejected_with_status_envelope_and_rate_limit_headers(
    upstream: Upstream, adapter: ToAPIsAdapter
) -> None:
    envelope = {"error": {"code": "rate_limit_exceeded", "message": "Async task request rate exceeded"}}
    upstream.answer(
        429,
        json_body=envelope,
        **{
            "Retry-After": "7",
            "X-RateLimit-Limit": "300",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "1703884860",
            "X-Upstream-Internal": "secret-node-7",
        },
    )

    with pytest.raises(UpstreamRejected) as info:
        await adapter.create(KEY, CREATE_BODY)

    error = info.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.message == "Async task request rate exceeded"
    assert error.body() == envelope
    assert error.headers == {  # only these, lower-cased
        "retry-after": "7",
        "x-ratelimit-limit": "300",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "1703884860",
    }


async def test_4xx_keeps_the_rate_limit_category_header(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    # The contract lists X-RateLimit-Category (async_submit|async_query) among the rate-limit headers.
    upstream.answer(
        429,
        json_body={"error": {"code": "rate_limit_exceeded", "message": "slow down"}},
        **{"Retry-After": "1", "X-RateLimit-Category": "async_submit"},
    )

    with pytest.raises(UpstreamRejected) as info:
        await adapter.create(KEY, CREATE_BODY)

    assert info.value.headers.get("x-ratelimit-category") == "async_submit"


async def test_4xx_envelope_with_param_and_type(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    envelope = {
        "error": {
            "code": "invalid_request",
            "message": "The 'prompt' field is required.",
            "param": "prompt",
            "type": "invalid_request_error",
        }
    }
    upstream.answer(400, json_body=envelope)

    with pytest.raises(UpstreamRejected) as info:
        await adapter.create(KEY, {"model": "doubao-seedream-4-0"})

    assert (info.value.status_code, info.value.param, info.value.type) == (400, "prompt", "invalid_request_error")
    assert info.value.body() == envelope
    assert info.value.headers == {}


async def test_404_with_numeric_code(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    envelope = {"error": {"code": 404, "message": "Task not found", "type": "not_found_error"}}
    upstream.answer(404, json_body=envelope)

    with pytest.raises(UpstreamRejected) as info:
        await adapter.get(KEY, "img_missing")

    assert (info.value.status_code, info.value.code) == (404, 404)
    assert info.value.body() == envelope


async def test_4xx_without_json_gets_a_synthesised_envelope(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    upstream.answer(400, text="<html>Bad Request</html>")

    with pytest.raises(UpstreamRejected) as info:
        await adapter.create(KEY, CREATE_BODY)

    assert info.value.status_code == 400
    assert info.value.body() == {"error": {"code": "upstream_rejected", "message": "Upstream refused the request"}}


# --- one mapping for every call -------------------------------------------------------------------------

Call = Callable[[ToAPIsAdapter], Awaitable[Any]]
CALLS: dict[str, Call] = {
    "create": lambda adapter: adapter.create(KEY, CREATE_BODY),
    "status": lambda adapter: adapter.get(KEY, "img_1"),
    "upload": lambda adapter: adapter.upload(KEY, "fox.png", PNG, "image/png", "generation"),
}


async def failure(call: Call, adapter: ToAPIsAdapter) -> tuple[str, int, Any]:
    """The gateway error a call ends in: its class, status and code."""
    with pytest.raises(GatewayError) as info:
        await call(adapter)
    return type(info.value).__name__, info.value.status_code, info.value.code


async def slow(_: web.Request) -> web.StreamResponse:
    await asyncio.sleep(READ_TIMEOUT_S * 4)
    return web.json_response(CREATED)


async def vanishing(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()  # read, then gone without a word
    await asyncio.sleep(READ_TIMEOUT_S * 4)
    return web.Response()


async def garbled(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.write(b"this is not HTTP\r\n\r\n")
    request.transport.close()
    await asyncio.sleep(READ_TIMEOUT_S * 4)
    return web.Response()


def unused_port() -> int:
    with socket.socket() as probe:  # a port that was free a moment ago: refused
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("answers 503", ("UpstreamServerError", 502, "upstream_error")),
        ("answers 401", ("UpstreamCredentialsRefused", 502, "upstream_auth_failed")),
        ("answers 403", ("UpstreamCredentialsRefused", 502, "upstream_auth_failed")),
        ("answers no JSON", ("UpstreamUnavailable", 502, "upstream_error")),
        ("does not answer in time", ("UpstreamTimeout", 504, "upstream_timeout")),
        ("closes the connection", ("UpstreamUnavailable", 502, "upstream_error")),
        ("answers garbage", ("UpstreamUnavailable", 502, "upstream_error")),
        ("refuses the connection", ("UpstreamUnavailable", 502, "upstream_error")),
        ("has no connection free in time", ("UpstreamUnavailable", 502, "upstream_error")),
    ],
)
@pytest.mark.parametrize("name", CALLS)
async def test_a_failure_is_the_same_gateway_error_whatever_the_call(
    upstream: Upstream, name: str, how: str, expected: tuple[str, int, str]
) -> None:
    """docs/architecture.md: 502 `upstream_error` when the upstream fails or cannot be reached (a connect timeout
    included: nothing was sent), 504 `upstream_timeout` when a sent request gets no answer within
    GATEWAY_UPSTREAM_TIMEOUT_S."""
    base = upstream.url
    held: asyncio.Task[Any] | None = None
    adapter = make_adapter(base, max_connections=1)
    try:
        match how:
            case "answers 503":
                upstream.answer(503, text="down")
            case "answers 401":
                upstream.answer(401, json_body={"error": {"code": "unauthorized", "message": "x"}})
            case "answers 403":
                upstream.answer(403, json_body={"error": {"code": "forbidden", "message": "x"}})
            case "answers no JSON":
                upstream.answer(200, text="<html>maintenance</html>")
            case "does not answer in time":
                upstream.handler = slow
            case "closes the connection":
                upstream.handler = vanishing
            case "answers garbage":
                upstream.handler = garbled
            case "refuses the connection":
                await adapter.aclose()
                adapter = make_adapter(f"http://127.0.0.1:{unused_port()}")
            case "has no connection free in time":  # its one connection busy for longer than the connect timeout
                await adapter.aclose()
                adapter = make_adapter(base, max_connections=1, timeout_s=READ_TIMEOUT_S * 10)
                upstream.handler = slow
                held = asyncio.create_task(adapter.get(KEY, "holds-the-only-connection"))
                await upstream.arrived.wait()
        assert await failure(CALLS[name], adapter) == expected
    finally:
        if held is not None:
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)
        await adapter.aclose()


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_upstream_unavailable(upstream: Upstream, adapter: ToAPIsAdapter, status: int) -> None:
    upstream.answer(status, json_body={"error": {"code": "internal_error", "message": "boom"}}, **{"Retry-After": "3"})

    with pytest.raises(UpstreamUnavailable) as info:
        await adapter.create(KEY, CREATE_BODY)

    assert info.value.status_code == 502
    assert info.value.code == "upstream_error"
    assert str(status) in info.value.message


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"<html>maintenance</html>", "text/html"),
        (b"", "application/json"),
        (b"\xff\xfe\xfa", "application/json"),
        (b'["task_img_1"]', "application/json"),
        (b'{"status": "queued"}', "application/json"),
    ],
    ids=["html", "empty", "undecodable", "json-list", "no-id"],
)
async def test_200_with_an_unusable_body_is_upstream_unavailable(
    upstream: Upstream, adapter: ToAPIsAdapter, content: bytes, content_type: str
) -> None:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(body=content, content_type=content_type)

    upstream.handler = handler

    with pytest.raises(UpstreamUnavailable) as info:
        await adapter.create(KEY, CREATE_BODY)

    assert info.value.status_code == 502


async def test_a_status_call_is_retried_once_on_a_dropped_keep_alive_connection_but_a_create_is_not(
    upstream: Upstream, adapter: ToAPIsAdapter
) -> None:
    """aiohttp resends an idempotent request whose reused connection turns out closed; a create is never sent twice
    (it would make two tasks)."""
    calls = 0

    async def drops_the_second(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 2:
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(READ_TIMEOUT_S * 4)
        return web.json_response(CREATED)

    upstream.handler = drops_the_second
    await adapter.get(KEY, "img_1")
    await adapter.get(KEY, "img_1")  # the second is dropped, and sent again
    assert calls == 3

    calls = 0
    await adapter.create(KEY, CREATE_BODY)
    with pytest.raises(UpstreamUnavailable):
        await adapter.create(KEY, CREATE_BODY)
    assert calls == 2


# --- uploads --------------------------------------------------------------------------------------------


async def test_upload_success(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    upstream.answer(json_body=UPLOADED)

    uploaded = await adapter.upload(KEY, "fox.png", PNG, "image/png", "generation")

    assert uploaded == UploadedFile(
        id="upload_abc12345", url="https://files.example/uploads/1.jpg", mime_type="image/png", size=89234
    )
    [sent] = upstream.seen
    assert (sent.method, sent.path) == ("POST", "/v1/uploads/images")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["user-agent"] == UA
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="file"; filename="fox.png"' in sent.body
    assert b"Content-Type: image/png" in sent.body
    assert PNG in sent.body
    assert b'name="purpose"' in sent.body
    assert b"generation" in sent.body


async def test_an_uploads_file_is_sent_whole_from_its_start_with_its_length(
    upstream: Upstream, adapter: ToAPIsAdapter
) -> None:
    """The upload service leaves the file past the bytes it sniffed (and its descriptor past what the buffered read
    took): it is sent from its start all the same, with a Content-Length (not chunked), in reads from disk."""
    image = PNG + bytes(range(256)) * 4096  # 1 MiB and a bit
    upstream.answer(json_body={"success": True, "data": {"id": "upload_1", "url": "https://files.example/u.png"}})
    with tempfile.TemporaryFile() as file:
        file.write(image)
        file.seek(0, io.SEEK_END)  # what app.uploads.service does: the size, then the first bytes
        file.seek(0)
        assert file.read(16) == image[:16]
        assert os.lseek(file.fileno(), 0, os.SEEK_CUR) > 16  # read ahead

        uploaded = await adapter.upload(KEY, "fox.png", file, "image/png", "generation")

    [sent] = upstream.seen
    assert int(sent.headers["content-length"]) == len(sent.body)
    assert "transfer-encoding" not in sent.headers
    assert image in sent.body
    assert uploaded.size == len(image)


async def test_an_uploads_file_stays_open_for_the_next_key(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    """aiohttp closes what it has sent; the upload service sends the same file again with another key when the
    first is refused."""
    upstream.answer(json_body=UPLOADED)
    with tempfile.TemporaryFile() as file:
        file.write(PNG)
        await adapter.upload(KEY, "fox.png", file, "image/png", "generation")
        await adapter.upload(KEY, "fox.png", file, "image/png", "generation")
        assert not file.closed

    assert [PNG in sent.body for sent in upstream.seen] == [True, True]


async def test_upload_without_mime_or_size_falls_back_to_what_was_sent(
    upstream: Upstream, adapter: ToAPIsAdapter
) -> None:
    upstream.answer(json_body={"success": True, "data": {"id": "upload_1", "url": "https://files.example/u.png"}})

    uploaded = await adapter.upload(KEY, "fox.png", io.BytesIO(PNG), "image/png", "generation")

    assert (uploaded.mime_type, uploaded.size) == ("image/png", len(PNG))


async def test_upload_refused_with_success_false(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    upstream.answer(json_body={"success": False, "message": "Image too large. Maximum size is 10MB"})

    with pytest.raises(UploadRefused) as info:
        await adapter.upload(KEY, "big.png", PNG, "image/png", "generation")

    assert info.value.status_code == 400
    assert info.value.message == "Image too large. Maximum size is 10MB"


async def test_upload_refused_keeps_a_4xx_status(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    upstream.answer(413, json_body={"success": False, "message": "Image too large. Maximum size is 10MB"})

    with pytest.raises(UploadRefused) as info:
        await adapter.upload(KEY, "big.png", PNG, "image/png", "generation")

    assert (info.value.status_code, info.value.message) == (413, "Image too large. Maximum size is 10MB")


async def test_upload_429_carries_its_retry_after(upstream: Upstream, adapter: ToAPIsAdapter) -> None:
    upstream.answer(429, json_body={"success": False, "message": "slow down"}, **{"Retry-After": "9"})

    with pytest.raises(UploadRefused) as info:
        await adapter.upload(KEY, "fox.png", PNG, "image/png", "generation")

    assert (info.value.status_code, info.value.retry_after_s) == (429, 9.0)


# --- the session itself ---------------------------------------------------------------------------------


async def test_build_session_defaults() -> None:
    session = build_session(user_agent=UA, timeout_s=12.0, connect_timeout_s=2.0, max_connections=3)
    try:
        assert session.headers["User-Agent"] == UA
        assert session.headers["Accept"] == "application/json"
        assert session.timeout.total is None  # a slow upload is not cut short as long as it moves
        assert session.timeout.sock_read == 12.0
        assert (session.timeout.connect, session.timeout.sock_connect) == (2.0, 2.0)
        assert session.connector is not None and session.connector.limit == 3
        assert not session.trust_env  # no proxy from the environment
        assert KEEPALIVE_S == 5.0
    finally:
        await session.close()
