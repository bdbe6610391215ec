"""Webhooks through the ASGI app, to a real HTTP receiver on 127.0.0.1.

Signatures are checked with hmac + hashlib written in tests/fixtures/webhook_receiver.py, never the gateway's own
signer. Retry times come from the fake clock (advanced, then the deliverer woken), so no test sleeps for them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import select, update

from app.contract import GenerationRequest
from app.models import AuditEvent, Tenant, WebhookDelivery
from app.webhooks.service import WebhookService
from tests.fixtures.gateway import ADMIN_TOKEN, Harness, running_gateway
from tests.fixtures.webhook_receiver import receiving, signatures, signed_by

URL = "/v1/images/generations"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE_S = 30.0


@pytest.fixture
async def hooks(database_url: str) -> AsyncIterator[Harness]:
    """A gateway that may call back to loopback (the receiver); the deliverer runs as in production."""
    async with running_gateway(database_url, webhook_allow_private=True) as harness:
        yield harness


def service(gw: Harness) -> WebhookService:
    webhooks: WebhookService = gw.app.state.webhooks
    return webhooks


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def tenant(gw: Harness, name: str) -> tuple[str, str]:
    key = await gw.new_tenant(name)
    return key, await gw.tenant_id(key)


async def configure(gw: Harness, tenant_id: str, **body: Any) -> dict[str, Any]:
    r = await gw.client.put(f"/admin/v1/tenants/{tenant_id}/webhook", headers=ADMIN, json=body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def run_task(gw: Harness, key: str, prompt: str = "a fox", **extra: Any) -> str:
    r = await gw.client.post(URL, headers=bearer(key), json={"prompt": prompt, **extra})
    assert r.status_code == 200, r.text
    task_id: str = r.json()["id"]
    gw.clock.advance(11)
    done = await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))
    assert done.json()["status"] in ("completed", "failed"), done.text
    return task_id


async def deliveries(gw: Harness, **params: str) -> list[dict[str, Any]]:
    r = await gw.client.get("/admin/v1/webhook-deliveries", headers=ADMIN, params=params)
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data


async def until(gw: Harness, delivery_id: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The delivery once `check` holds (generous deadline), waking the deliverer meanwhile."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        r = await gw.client.get(f"/admin/v1/webhook-deliveries/{delivery_id}", headers=ADMIN)
        assert r.status_code == 200, r.text
        row: dict[str, Any] = r.json()
        if check(row):
            return row
        assert time.monotonic() < deadline, row
        service(gw).wake()
        await _pause()


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.05)


# --- configuration --------------------------------------------------------------------------------------------------
async def test_the_secret_is_shown_once_and_never_echoed(hooks: Harness) -> None:
    _, tenant_id = await tenant(hooks, "acme")
    async with receiving() as receiver:
        made = await configure(hooks, tenant_id, url=receiver.url)
        secret = made["secret"]
        assert secret.startswith("whsec_") and len(secret) >= 6 + 43  # 32 random bytes
        assert made["url"] == receiver.url and made["secret_set"] is True
        shown = await hooks.client.get(f"/admin/v1/tenants/{tenant_id}/webhook", headers=ADMIN)
        assert shown.status_code == 200 and shown.json()["secret"] is None and secret not in shown.text
        again = await configure(hooks, tenant_id, callback_origins=["HTTP://93.184.215.14:80/"])
        assert again["secret"] is None and again["callback_origins"] == ["http://93.184.215.14"]
        stored = await _tenant_row(hooks, tenant_id)
        assert stored.webhook_secret is not None and secret not in stored.webhook_secret  # encrypted at rest
    async with hooks.sessions() as session:
        audit = (await session.execute(select(AuditEvent).where(AuditEvent.target_id == tenant_id))).scalars().all()
    actions = [e.action for e in audit]
    assert actions.count("webhook.update") == 2
    assert all(secret not in json.dumps(e.detail) for e in audit)


async def test_a_tenant_without_an_endpoint_has_nothing_to_test(hooks: Harness) -> None:
    _, tenant_id = await tenant(hooks, "acme")
    r = await hooks.client.post(f"/admin/v1/tenants/{tenant_id}/webhook/test", headers=ADMIN)
    assert r.status_code == 409 and r.json()["error"]["code"] == "webhook_not_configured"
    r = await hooks.client.get("/admin/v1/tenants/nobody/webhook", headers=ADMIN)
    assert r.status_code == 404
    r = await hooks.client.get(f"/admin/v1/tenants/{tenant_id}/webhook")
    assert r.status_code == 401


async def test_delete_forgets_endpoint_secret_and_origins(hooks: Harness) -> None:
    _, tenant_id = await tenant(hooks, "acme")
    await configure(hooks, tenant_id, url="http://127.0.0.1:9/x", callback_origins=["http://127.0.0.1:9"])
    r = await hooks.client.delete(f"/admin/v1/tenants/{tenant_id}/webhook", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "tenant_id": tenant_id,
        "url": None,
        "callback_origins": [],
        "secret_set": False,
        "previous_secret_until": None,
        "secret": None,
    }
    # Deleted means gone: a read afterwards is a 404, as before the first PUT (it used to answer 200).
    gone = await hooks.client.get(f"/admin/v1/tenants/{tenant_id}/webhook", headers=ADMIN)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "webhook_not_found"
    _, other = await tenant(hooks, "globex")
    never = await hooks.client.get(f"/admin/v1/tenants/{other}/webhook", headers=ADMIN)
    assert never.status_code == 404 and never.json()["error"]["code"] == "webhook_not_found"


# --- events ---------------------------------------------------------------------------------------------------------
async def test_a_completed_task_is_posted_once_signed_as_the_upstream_signs(hooks: Harness) -> None:
    key, tenant_id = await tenant(hooks, "acme")
    async with receiving() as receiver:
        secret = (await configure(hooks, tenant_id, url=receiver.url))["secret"]
        task_id = await run_task(hooks, key, client_business_id="order-9", n=2)
        [got] = await receiver.wait_for(1)
        assert got.path == "/hook"
        assert got.headers["content-type"] == "application/json"
        assert signed_by(got, secret) and len(signatures(got)) == 1
        event = json.loads(got.body)
        assert event["id"] == got.headers["x-toapis-webhook-id"] and event["id"].startswith("evt_")
        assert abs(int(got.headers["x-toapis-webhook-timestamp"]) - hooks.clock.time()) < 300
        assert event["type"] == "generation.completed" and event["api_version"] == "v1"
        data = event["data"]
        assert data["task_id"] == task_id and data["client_business_id"] == "order-9"
        assert data["task_type"] == "image" and data["model"] == "doubao-seedream-4-0"
        assert data["status"] == "SUCCESS" and data["progress"] == "100%" and data["error"] is None
        assert data["result"]["type"] == "image" and len(data["result"]["data"]) == 2
        assert all(item["url"].startswith("http") for item in data["result"]["data"])
        assert data["submitted_at"] <= data["finished_at"]
        row = await until(hooks, event["id"], lambda d: d["status"] == "delivered")
        assert row["attempts"] == 1 and row["last_status_code"] == 204 and row["last_error"] is None
        # More polls, more wake-ups: the end happened once, so did its event.
        for _ in range(3):
            hooks.clock.advance(5)
            await hooks.client.get(f"{URL}/{task_id}", headers=bearer(key))
            service(hooks).wake()
        assert await service(hooks).deliver_due() == 0
        assert len(receiver.requests) == 1
        assert [d["id"] for d in await deliveries(hooks, task_id=task_id)] == [event["id"]]


async def test_a_failed_task_is_a_generation_failed_event(hooks: Harness) -> None:
    key, tenant_id = await tenant(hooks, "acme")
    async with receiving() as receiver:
        secret = (await configure(hooks, tenant_id, url=receiver.url))["secret"]
        task_id = await run_task(hooks, key, prompt="doomed [fault:fail]")
        [got] = await receiver.wait_for(1)
        assert signed_by(got, secret)
        event = json.loads(got.body)
        assert event["type"] == "generation.failed"
        data = event["data"]
        assert data["task_id"] == task_id and data["status"] == "FAILURE" and data["result"] is None
        assert set(data["error"]) == {"code", "message"} and data["error"]["code"]


async def test_retries_on_the_schedule_then_delivered(hooks: Harness) -> None:
    _, tenant_id = await tenant(hooks, "acme")
    async with receiving(fail_first=2, fail_status=503) as receiver:
        await configure(hooks, tenant_id, url=receiver.url)
        sent = await hooks.client.post(f"/admin/v1/tenants/{tenant_id}/webhook/test", headers=ADMIN)
        assert sent.status_code == 202, sent.text
        delivery_id = sent.json()["id"]
        first = await until(hooks, delivery_id, lambda d: d["attempts"] == 1)
        assert first["status"] == "pending" and first["last_status_code"] == 503
        assert first["last_error"] == "HTTP 503"
        assert first["next_attempt_at"] == int(hooks.clock.time()) + 10  # the upstream's first retry: 10 s
        hooks.clock.advance(9)
        assert await service(hooks).deliver_due() == 0  # not due yet
        hooks.clock.advance(1)
        second = await until(hooks, delivery_id, lambda d: d["attempts"] == 2)
        assert second["status"] == "pending" and second["next_attempt_at"] == int(hooks.clock.time()) + 30
        hooks.clock.advance(30)
        done = await until(hooks, delivery_id, lambda d: d["status"] == "delivered")
        assert done["attempts"] == 3 and done["last_status_code"] == 204 and done["last_error"] is None
        assert len(receiver.requests) == 3
        assert {r.headers["x-toapis-webhook-id"] for r in receiver.requests} == {delivery_id}
        assert json.loads(receiver.requests[0].body)["type"] == "endpoint.test"


async def test_dead_after_the_last_retry_then_replayed(database_url: str) -> None:
    async with running_gateway(database_url, webhook_allow_private=True, webhook_retry_schedule_s="1,2") as gw:
        _, tenant_id = await tenant(gw, "acme")
        async with receiving(fail_first=3) as receiver:
            await configure(gw, tenant_id, url=receiver.url)
            delivery_id = (await gw.client.post(f"/admin/v1/tenants/{tenant_id}/webhook/test", headers=ADMIN)).json()[
                "id"
            ]
            await until(gw, delivery_id, lambda d: d["attempts"] == 1)
            gw.clock.advance(1)
            await until(gw, delivery_id, lambda d: d["attempts"] == 2)
            gw.clock.advance(2)
            dead = await until(gw, delivery_id, lambda d: d["status"] == "dead")
            assert dead["attempts"] == 3 and dead["next_attempt_at"] is None and dead["last_status_code"] == 500
            gw.clock.advance(3600)
            assert await service(gw).deliver_due() == 0 and len(receiver.requests) == 3
            assert [d["id"] for d in await deliveries(gw, status="dead", tenant_id=tenant_id)] == [delivery_id]

            replayed = await gw.client.post(f"/admin/v1/webhook-deliveries/{delivery_id}/replay", headers=ADMIN)
            assert replayed.status_code == 200, replayed.text
            assert replayed.json()["status"] == "pending" and replayed.json()["attempts"] == 0
            done = await until(gw, delivery_id, lambda d: d["status"] == "delivered")
            assert done["attempts"] == 1
            assert receiver.requests[-1].headers["x-toapis-webhook-id"] == delivery_id  # the same event
            assert receiver.requests[-1].body == receiver.requests[0].body

            # A delivered one may be replayed too (a receiver that lost it).
            again = await gw.client.post(f"/admin/v1/webhook-deliveries/{delivery_id}/replay", headers=ADMIN)
            assert again.json()["status"] == "pending"
            await until(gw, delivery_id, lambda d: d["status"] == "delivered")
            assert len(receiver.requests) == 5
        missing = await gw.client.post("/admin/v1/webhook-deliveries/evt_nope/replay", headers=ADMIN)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "delivery_not_found"
        async with gw.sessions() as session:
            audit = (await session.execute(select(AuditEvent.action, AuditEvent.outcome))).all()
        assert ("webhook.replay", "ok") in audit and ("webhook.replay", "refused") in audit
        assert ("webhook.test", "ok") in audit


async def test_the_previous_secret_signs_too_during_a_rotation(hooks: Harness) -> None:
    _, tenant_id = await tenant(hooks, "acme")
    async with receiving() as receiver:
        old = (await configure(hooks, tenant_id, url=receiver.url))["secret"]
        rotated = await configure(hooks, tenant_id, rotate_secret=True, grace_seconds=600)
        new = rotated["secret"]
        assert new and new != old
        assert rotated["previous_secret_until"] == int(hooks.clock.time()) + 600
        await hooks.client.post(f"/admin/v1/tenants/{tenant_id}/webhook/test", headers=ADMIN)
        [during] = await receiver.wait_for(1)
        assert len(signatures(during)) == 2
        assert signed_by(during, new) and signed_by(during, old)
        assert signatures(during)[0] != signatures(during)[1]

        hooks.clock.advance(601)
        await hooks.client.post(f"/admin/v1/tenants/{tenant_id}/webhook/test", headers=ADMIN)
        after = (await receiver.wait_for(2))[1]
        assert len(signatures(after)) == 1 and signed_by(after, new) and not signed_by(after, old)
        shown = await hooks.client.get(f"/admin/v1/tenants/{tenant_id}/webhook", headers=ADMIN)
        assert shown.json()["previous_secret_until"] is None


# --- callback_url ---------------------------------------------------------------------------------------------------
async def test_callback_url_only_at_an_allowed_origin(hooks: Harness) -> None:
    key, tenant_id = await tenant(hooks, "acme")
    async with receiving() as receiver:
        refused = await hooks.client.post(
            URL, headers=bearer(key), json={"prompt": "a fox", "callback_url": receiver.url + "?order=1"}
        )
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert error["param"] == "callback_url" and error["code"] == "callback_url_not_allowed"
        origin = receiver.url.rsplit("/", 1)[0]
        secret = (await configure(hooks, tenant_id, callback_origins=[origin]))["secret"]
        for bad in (
            "http://127.0.0.2:1/x",
            origin.replace("http://", "https://") + "/x",
            f"http://user@{origin.removeprefix('http://')}/x",
        ):
            r = await hooks.client.post(URL, headers=bearer(key), json={"prompt": "a fox", "callback_url": bad})
            assert r.status_code == 403 and r.json()["error"]["param"] == "callback_url", (bad, r.text)
        task_id = await run_task(hooks, key, callback_url=receiver.url + "?order=1")
        async with hooks.sessions() as session:
            row = await session.get(__import__("app.models", fromlist=["Task"]).Task, task_id)
            assert row is not None and row.callback_url == receiver.url + "?order=1"
            assert "callback_url" not in row.request  # never forwarded upstream
        [got] = await receiver.wait_for(1)
        assert got.path == "/hook?order=1" and signed_by(got, secret)
        assert json.loads(got.body)["data"]["task_id"] == task_id


async def test_one_event_per_target_per_task_end(hooks: Harness) -> None:
    key, tenant_id = await tenant(hooks, "acme")
    async with receiving(path="/tenant") as endpoint, receiving(path="/cb") as callback:
        origin = callback.url.rsplit("/", 1)[0]
        await configure(hooks, tenant_id, url=endpoint.url, callback_origins=[origin, endpoint.url.rsplit("/", 1)[0]])
        both = await run_task(hooks, key, callback_url=callback.url)
        same = await run_task(hooks, key, callback_url=endpoint.url)  # the same URL twice: once
        plain = await run_task(hooks, key)
        await endpoint.wait_for(3)
        await callback.wait_for(1)
        rows = await deliveries(hooks, tenant_id=tenant_id, limit="100")
        per_task = {t: sorted(d["url"] for d in rows if d["task_id"] == t) for t in (both, same, plain)}
        assert per_task == {both: sorted([endpoint.url, callback.url]), same: [endpoint.url], plain: [endpoint.url]}
        for d in rows:
            await until(hooks, d["id"], lambda x: x["status"] == "delivered")
        assert len(endpoint.requests) == 3 and len(callback.requests) == 1


async def test_an_idempotency_key_is_bound_to_the_callback_url_too(hooks: Harness) -> None:
    """The same key and body with another callback URL is another request: 409, never the first task replayed with
    the new URL silently dropped."""
    key, tenant_id = await tenant(hooks, "acme")
    async with receiving() as receiver:
        await configure(hooks, tenant_id, callback_origins=[receiver.url.rsplit("/", 1)[0]])
        headers = {**bearer(key), "Idempotency-Key": "order-1"}
        first = {"prompt": "a fox", "callback_url": receiver.url + "?to=a"}
        made = await hooks.client.post(URL, headers=headers, json=first)
        assert made.status_code == 200, made.text
        again = await hooks.client.post(URL, headers=headers, json=first)
        assert again.status_code == 200 and again.json()["id"] == made.json()["id"]
        other = await hooks.client.post(URL, headers=headers, json={**first, "callback_url": receiver.url + "?to=b"})
        assert other.status_code == 409, other.text
        assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_callback_url_is_not_forwarded_upstream() -> None:
    request = GenerationRequest.model_validate({"prompt": "x", "callback_url": "https://example.com/cb"})
    assert "callback_url" not in request.to_upstream()


# --- SSRF ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "http://user:pw@93.184.215.14/hook",
        "ftp://93.184.215.14/hook",
        "http://no-such-host.invalid/hook",
    ],
)
async def test_internal_targets_are_refused_when_configured(gw: Harness, url: str) -> None:
    _, tenant_id = await tenant(gw, "acme")
    r = await gw.client.put(f"/admin/v1/tenants/{tenant_id}/webhook", headers=ADMIN, json={"url": url})
    # Not http(s) at all is the document's rule (400); the rest is the gateway's policy on well-formed URLs (409).
    status, code = (400, "invalid_request") if url.startswith("ftp") else (409, "invalid_webhook_target")
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] in ("url", "body.url") and r.json()["error"]["code"] == code
    origin = url.rsplit("/", 1)[0] if "://" in url else url
    r = await gw.client.put(
        f"/admin/v1/tenants/{tenant_id}/webhook", headers=ADMIN, json={"callback_origins": [origin]}
    )
    assert r.status_code == status and r.json()["error"]["param"].startswith(("callback_origins", "body")), r.text
    assert (await _tenant_row(gw, tenant_id)).webhook_secret is None  # nothing changed


async def test_an_internal_address_is_refused_at_connect_time(gw: Harness) -> None:
    """A target that passed the check when configured (a public address) but points inward when it is called
    (DNS rebinding, or a row changed behind the API's back): the delivery refuses to connect."""
    _, tenant_id = await tenant(gw, "acme")
    await configure(gw, tenant_id, url="http://93.184.215.14/hook")  # an IP literal: checked without DNS
    async with receiving() as receiver:
        async with gw.sessions.begin() as session:
            await session.execute(update(Tenant).where(Tenant.id == tenant_id).values(webhook_url=receiver.url))
        sent = await gw.client.post(f"/admin/v1/tenants/{tenant_id}/webhook/test", headers=ADMIN)
        row = await until(gw, sent.json()["id"], lambda d: d["attempts"] == 1)
        assert row["status"] == "pending" and row["last_status_code"] is None
        assert "refused" in row["last_error"] and "127.0.0.1" in row["last_error"]
        assert receiver.requests == []


async def _tenant_row(gw: Harness, tenant_id: str) -> Tenant:
    async with gw.sessions() as session:
        row = await session.get(Tenant, tenant_id)
    assert row is not None
    return row


async def test_deliveries_page_and_filter(hooks: Harness) -> None:
    _, a = await tenant(hooks, "a")
    _, b = await tenant(hooks, "b")
    async with receiving() as receiver:
        for tenant_id in (a, b):
            await configure(hooks, tenant_id, url=receiver.url)
        ids = []
        for tenant_id in (a, a, a, b):
            r = await hooks.client.post(f"/admin/v1/tenants/{tenant_id}/webhook/test", headers=ADMIN)
            ids.append(r.json()["id"])
        await receiver.wait_for(4)
    first = await hooks.client.get("/admin/v1/webhook-deliveries", headers=ADMIN, params={"tenant_id": a, "limit": 2})
    page = first.json()
    assert [d["id"] for d in page["data"]] == ids[2:0:-1] and page["next_cursor"] == ids[1]
    second = await hooks.client.get(
        "/admin/v1/webhook-deliveries", headers=ADMIN, params={"tenant_id": "a", "limit": 2, "cursor": ids[1]}
    )
    assert [d["id"] for d in second.json()["data"]] == [ids[0]] and second.json()["next_cursor"] is None
    assert all("secret" not in json.dumps(d) for d in page["data"])
    async with hooks.sessions() as session:
        count = len((await session.execute(select(WebhookDelivery.id))).all())
    assert count == 4
