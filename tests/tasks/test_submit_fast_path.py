"""The submit fast path (app/tasks/fast_path.py): a known key's submit is answered before routing, and every answer,
errors included, is the one the routed call gives.

Two tenants with the same limits send the same requests: `fast`, whose key is warm and has no per-minute submit limit
(the fast path answers), and `routed`, with a per-minute limit no test reaches (always routed: its window is counted
there). Their answers must agree, rate headers aside.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from app.tasks.service import TaskService
from app.tenants.service import TenantService
from tests.fixtures.gateway import Harness, until_fresh
from tests.metrics.test_metrics import delta, scrape

URL = "/v1/images/generations"
HIGH_RPM = 100_000


class Routing:
    """The routed path's key checks, by tenant key (`authenticate_key`: the fast path uses `known_key` alone)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.counting = True

    def of(self, key: str) -> int:
        return self.calls.count(f"Bearer {key}")


@pytest.fixture
def routing(monkeypatch: pytest.MonkeyPatch) -> Routing:
    routing = Routing()
    real = TenantService.authenticate_key

    async def spy(self: TenantService, authorization: str | None) -> Any:
        if routing.counting:
            routing.calls.append(authorization or "")
        return await real(self, authorization)

    monkeypatch.setattr(TenantService, "authenticate_key", spy)
    return routing


async def warm(gw: Harness, keys: dict[str, str], routing: Routing | None = None) -> None:
    """Every key known in memory, and memory trusted. On a busy machine the invalidator may have gone longer than
    its bound without a read since the last request, and then its next read drops every cached key
    (app/core/invalidation.py): so this is done before each request whose path a test asserts."""
    for _ in range(3):
        await until_fresh(gw)  # also reads the events still pending (a new tenant's own drops its keys)
        missing = [key for key in keys.values() if gw.tenants.known_key(f"Bearer {key}") is None]
        if not missing:
            return
        if routing is not None:
            routing.counting = False
        try:
            for key in missing:
                await gw.tenants.authenticate_key(f"Bearer {key}")
        finally:
            if routing is not None:
                routing.counting = True
    raise AssertionError("the keys never became known in memory")


def shape(response: httpx.Response) -> tuple[int, str | None, Any]:
    """Status, content type and body, with what differs between two tasks (id, times) blanked."""
    body = response.json()
    if isinstance(body, dict) and "id" in body:
        body = {**body, "id": "<id>", "created_at": "<t>"}
    return response.status_code, response.headers.get("content-type"), body


async def both(client: httpx.AsyncClient, keys: dict[str, str], **request: Any) -> dict[str, httpx.Response]:
    answers = {}
    extra = request.pop("headers", {})
    for name, key in keys.items():
        answers[name] = await client.post(URL, headers={"Authorization": f"Bearer {key}", **extra}, **request)
    return answers


async def agree(
    gw: Harness,
    keys: dict[str, str],
    client: httpx.AsyncClient | None = None,
    routing: Routing | None = None,
    **request: Any,
) -> httpx.Response:
    """The same request by both tenants; their answers must be the same."""
    await warm(gw, keys, routing)
    answers = await both(client or gw.client, keys, **request)
    assert shape(answers["fast"]) == shape(answers["routed"]), (answers["fast"].text, answers["routed"].text)
    assert "x-ratelimit-limit" not in answers["fast"].headers
    return answers["fast"]


async def tenants(gw: Harness, **limits: int | None) -> dict[str, str]:
    return {
        "fast": await gw.new_tenant("fast", **limits),
        "routed": await gw.new_tenant("routed", submit_rpm=HIGH_RPM, **limits),
    }


async def test_every_answer_agrees_with_the_routed_call(gw: Harness, routing: Routing) -> None:
    keys = await tenants(gw, daily_images=20)

    ok = await agree(gw, keys, routing=routing, json={"prompt": "a fox", "client_business_id": "order-1"})
    assert ok.status_code == 200 and ok.json()["status"] == "queued"
    # Idempotency-Key: a replay answers the same task, another body is a conflict.
    await warm(gw, keys, routing)
    first = await both(gw.client, keys, json={"prompt": "a fox"}, headers={"Idempotency-Key": "k-1"})
    again = await agree(gw, keys, routing=routing, json={"prompt": "a fox"}, headers={"Idempotency-Key": "k-1"})
    assert again.json()["id"] == first["fast"].json()["id"]
    conflict = await agree(gw, keys, routing=routing, json={"prompt": "a cat"}, headers={"Idempotency-Key": "k-1"})
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_key_reused"
    # Refused by the rules the service applies (the envelope of the app's exception handlers).
    callback = await agree(
        gw, keys, routing=routing, json={"prompt": "a fox", "callback_url": "http://example.com/hook"}
    )
    assert callback.status_code == 403 and callback.json()["error"]["code"] == "callback_url_not_allowed"
    # What the fast path leaves to the app: the app's own answers.
    for request in (
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        {"json": {"n": 1}},
        {"json": {"prompt": "a fox", "n": 99}},
        {"json": ["a list"]},
        {"content": b'{"prompt": "a fox"}', "headers": {"Content-Type": "text/plain"}},
        {"json": {"prompt": "a fox"}, "headers": {"Idempotency-Key": "has space"}},
    ):
        refused = await agree(gw, keys, routing=routing, **request)
        assert refused.status_code in (400, 415), refused.text
    assert (await agree(gw, keys, routing=routing, json={"prompt": "a fox"}, params={"x": "1"})).status_code == 200
    # The daily quota runs out at the same request for both.
    for _ in range(20):
        last = await agree(gw, keys, routing=routing, json={"prompt": "a fox"})
        if last.status_code == 402:
            break
    assert last.status_code == 402 and last.json()["error"]["code"] == "insufficient_quota", last.text

    # The fast tenant's calls that were left to the app, and only those, authenticated there (a body that is not
    # JSON, or not an object, is refused before authentication on the routed path).
    assert routing.of(keys["fast"]) == 5
    assert routing.of(keys["routed"]) > 12


async def test_a_failure_inside_the_submit_is_answered_as_the_app_answers_it(
    gw: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = await tenants(gw)

    async def database_down(*_: Any, **__: Any) -> Any:
        raise OperationalError("INSERT INTO tasks", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(TaskService, "submit", database_down)
    down = await agree(gw, keys, routing=routing, json={"prompt": "a fox"})
    assert down.status_code == 503 and down.json()["error"]["code"] == "database_unavailable"
    assert down.headers["retry-after"]

    async def bug(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(TaskService, "submit", bug)
    # An unexpected error reaches the server on the routed path (Starlette re-raises it after answering): a client
    # that does not raise it here, as a real server's would not.
    transport = httpx.ASGITransport(app=gw.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        failed = await agree(gw, keys, client, json={"prompt": "a fox"})
    assert failed.status_code == 500 and failed.json()["error"]["message"] == "Internal error"
    assert "a bug" not in failed.text


async def test_metrics_name_the_route(gw: Harness, routing: Routing) -> None:
    keys = await tenants(gw)
    before = await scrape(gw.client)
    await warm(gw, keys, routing)
    r = await gw.client.post(URL, headers={"Authorization": f"Bearer {keys['fast']}"}, json={"prompt": "a fox"})
    assert r.status_code == 200 and r.headers["x-request-id"]
    assert routing.calls == []  # the fast path answered
    after = await scrape(gw.client)
    moved = delta(before, after, "gateway_http_requests_total", route=URL, method="POST", status="200")
    assert moved == 1
