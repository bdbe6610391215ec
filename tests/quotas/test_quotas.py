"""Quotas and rate limits through the ASGI app: every limit kind, settlement, refunds, headers, ops API."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.models.task import TaskStatus
from app.tasks import ending
from tests.fixtures.gateway import ADMIN_TOKEN, Harness

URL = "/v1/images/generations"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post(gw: Harness, key: str, prompt: str = "a fox", n: int = 1) -> httpx.Response:
    return await gw.client.post(URL, headers=bearer(key), json={"prompt": prompt, "n": n})


async def usage(gw: Harness, key: str) -> dict[str, Any]:
    r = await gw.client.get("/v1/usage", headers=bearer(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def finish_all(gw: Harness, key: str, ids: list[str]) -> list[dict[str, Any]]:
    gw.clock.advance(3600)
    answers = [await gw.client.get(f"{URL}/{task_id}", headers=bearer(key)) for task_id in ids]
    return [a.json() for a in answers]


def completed_values(now: Any) -> dict[str, Any]:
    """What the upstream's answer writes when a task completed with one image (for `TaskService._record`)."""
    return {
        "status": "completed",
        "progress": 100,
        "result_urls": ["https://img.test/1.png"],
        "updated_at": now,
        "completed_at": now,
    }


async def drift(gw: Harness) -> dict[str, Any]:
    r = await gw.client.get("/admin/v1/quota/drift", headers=ADMIN)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_daily_budget_is_402_before_anything_is_spent(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=5)
    assert (await post(gw, key, n=3)).status_code == 200
    r = await post(gw, key, n=3)
    assert r.status_code == 402
    assert r.json()["error"]["code"] == "insufficient_quota"
    assert gw.sandbox_stats()["create"] == 1
    assert (await post(gw, key, n=2)).status_code == 200
    day = (await usage(gw, key))["day"]
    assert (day["used"], day["limit"], day["remaining"]) == (5, 5, 0)


async def test_monthly_budget(gw: Harness) -> None:
    key = await gw.new_tenant("acme", monthly_images=2)
    assert (await post(gw, key, n=2)).status_code == 200
    r = await post(gw, key)
    assert r.status_code == 402 and "monthly" in r.json()["error"]["message"]


async def test_in_flight_cap_is_429_and_frees_when_a_task_ends(gw: Harness) -> None:
    key = await gw.new_tenant("acme", max_in_flight=2)
    first = (await post(gw, key)).json()
    assert (await post(gw, key)).status_code == 200
    r = await post(gw, key)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.headers["retry-after"] and r.headers["x-ratelimit-limit"] == "2"
    assert r.headers["x-ratelimit-remaining"] == "0"
    await finish_all(gw, key, [first["id"]])
    assert (await post(gw, key)).status_code == 200
    assert (await usage(gw, key))["in_flight"] == {"current": 2, "limit": 2}


async def test_submit_rate_limit_headers_and_window_reset(gw: Harness) -> None:
    key = await gw.new_tenant("acme", submit_rpm=3)
    gw.clock.t = 1_790_000_080.0  # 20 s before the minute window ends
    answers = [await post(gw, key) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["2", "1", "0"]
    assert answers[0].headers["x-ratelimit-limit"] == "3"
    assert answers[0].headers["x-ratelimit-reset"] == "1790000100"
    refused = await post(gw, key)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "20"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    gw.clock.advance(20)
    assert (await post(gw, key)).status_code == 200


async def test_query_rate_limit_counts_status_calls_apart(gw: Harness) -> None:
    key = await gw.new_tenant("acme", query_rpm=2, submit_rpm=1)
    task = (await post(gw, key)).json()
    assert (await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))).status_code == 200
    assert (await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))).status_code == 200
    r = await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))
    assert r.status_code == 429 and "retry-after" in r.headers


async def test_unlimited_tenant_has_no_rate_headers(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    r = await post(gw, key)
    assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers


async def test_settle_charges_only_produced_images(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=10)
    task = (await post(gw, key, "a fox [fault:fewer]", n=4)).json()
    assert (await usage(gw, key))["day"]["used"] == 4
    done = (await finish_all(gw, key, [task["id"]]))[0]
    assert done["status"] == "completed" and len(done["result"]["data"]) == 3
    assert (await usage(gw, key))["day"]["used"] == 3
    assert (await usage(gw, key))["in_flight"]["current"] == 0
    assert (await drift(gw))["ok"] is True


async def test_failed_task_is_refunded_once_however_often_polled(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=10)
    task = (await post(gw, key, "a fox [fault:fail]", n=3)).json()
    for _ in range(3):
        await finish_all(gw, key, [task["id"]])
    assert (await usage(gw, key))["day"]["used"] == 0
    async with gw.sessions.begin() as session:  # a second replica ending (and so settling) the same task
        failed = {"status": TaskStatus.FAILED, "error_code": "again", "error_message": "again"}
        assert await ending.end(session, task["id"], failed, 0, gw.clock.now()) is None
    assert (await usage(gw, key))["day"]["used"] == 0
    assert (await drift(gw))["ok"] is True


async def test_upstream_refusal_is_refunded(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=2, max_in_flight=1)
    r = await post(gw, key, "x [fault:content_policy]", n=2)  # the caller's own fault: failed and refunded at once
    assert r.status_code == 422
    body = await usage(gw, key)
    assert body["day"]["used"] == 0 and body["in_flight"]["current"] == 0
    assert (await post(gw, key, n=2)).status_code == 200
    assert (await drift(gw))["ok"] is True


@pytest.mark.parametrize("fault", ["429", "500"])
async def test_a_task_the_upstream_never_takes_is_refunded_at_its_queue_deadline(gw: Harness, fault: str) -> None:
    from app.tasks.reconciler import Reconciler

    key = await gw.new_tenant("acme", daily_images=2, max_in_flight=1)
    gw.sandbox_config(error_rate=1.0) if fault == "500" else gw.sandbox_config(rate_limit_rate=1.0)
    r = await post(gw, key, "x", n=2)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert (await usage(gw, key))["day"]["used"] == 2  # reserved while it waits
    reconciler = Reconciler(gw.tasks, interval_s=1)
    for _ in range(12):  # the dispatcher keeps trying, with backoff, for ten minutes
        gw.clock.advance(60)
        await reconciler.run_once()
    task = (
        await gw.client.get(f"/v1/images/generations/{r.json()['id']}", headers={"Authorization": f"Bearer {key}"})
    ).json()
    assert task["status"] == "failed" and task["error"]["code"] == "upstream_unavailable"
    body = await usage(gw, key)
    assert body["day"]["used"] == 0 and body["in_flight"]["current"] == 0
    assert (await drift(gw))["ok"] is True


async def test_period_rollover_with_the_injected_clock(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=2, monthly_images=3)
    gw.clock.t = 1_795_651_199.0  # 2026-11-25 23:59:59 UTC
    assert (await post(gw, key, n=2)).status_code == 200
    assert (await post(gw, key)).status_code == 402
    gw.clock.advance(1)  # a new UTC day, same month
    assert (await post(gw, key)).status_code == 200
    assert (await post(gw, key)).status_code == 402  # the month is full now
    body = await usage(gw, key)
    assert body["day"] == {"period": "2026-11-26", "used": 1, "limit": 2, "remaining": 1, "resets_at": 1795737600}
    assert body["month"]["used"] == 3 and body["month"]["remaining"] == 0
    gw.clock.t = 1_796_083_200.0  # 2026-12-01 00:00:00 UTC
    assert (await post(gw, key, n=2)).status_code == 200
    assert (await usage(gw, key))["month"] == {
        "period": "2026-12",
        "used": 2,
        "limit": 3,
        "remaining": 1,
        "resets_at": 1798761600,
    }


async def test_refund_after_rollover_returns_to_the_reservation_period(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=2)
    gw.clock.t = 1_795_651_190.0
    task = (await post(gw, key, "x [fault:fail]", n=2)).json()
    gw.clock.t = 1_795_651_200.0 + 3600  # next day: the refund belongs to yesterday
    await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))
    assert (await usage(gw, key))["day"]["used"] == 0
    assert (await drift(gw))["ok"] is True


async def test_concurrent_submits_never_overdraw(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=25)
    answers = await asyncio.gather(*[post(gw, key) for _ in range(60)])
    codes = [a.status_code for a in answers]
    assert codes.count(200) == 25 and codes.count(402) == 35
    assert (await usage(gw, key))["day"]["used"] == 25
    assert gw.sandbox_stats()["create"] == 25
    assert (await drift(gw))["ok"] is True


async def test_limit_changes_apply_at_once(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=1)
    tenant_id = await gw.tenant_id(key)
    assert (await post(gw, key)).status_code == 200
    assert (await post(gw, key)).status_code == 402
    r = await gw.client.put(f"/admin/v1/tenants/{tenant_id}/limits", headers=ADMIN, json={"daily_images": None})
    assert r.status_code == 200 and r.json()["daily_images"] is None
    assert (await post(gw, key)).status_code == 200


async def test_admin_limits_put_semantics_and_validation(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=10, query_rpm=50)
    tenant_id = await gw.tenant_id(key)
    path = f"/admin/v1/tenants/{tenant_id}/limits"
    r = await gw.client.put(path, headers=ADMIN, json={"monthly_images": 100, "query_rpm": None})
    assert r.json() == {
        "tenant_id": tenant_id,
        "daily_images": 10,
        "monthly_images": 100,
        "max_in_flight": None,
        "submit_rpm": None,
        "query_rpm": None,
    }
    assert (await gw.client.get(path, headers=ADMIN)).json() == r.json()
    for bad in ({"daily_images": -1}, {"daily_images": "5"}, {"daily_images": 1.5}, {"bogus": 1}):
        r = await gw.client.put(path, headers=ADMIN, json=bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", bad
    r = await gw.client.get("/admin/v1/tenants/ten_missing/limits", headers=ADMIN)
    assert r.status_code == 404 and set(r.json()) == {"error"}


async def test_admin_api_refuses_tenant_keys_and_missing_token(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    tenant_id = await gw.tenant_id(key)
    for headers in ({}, bearer(key), {"Authorization": "Bearer wrong"}):
        for method, path in (
            ("GET", f"/admin/v1/tenants/{tenant_id}/limits"),
            ("PUT", f"/admin/v1/tenants/{tenant_id}/limits"),
            ("GET", f"/admin/v1/tenants/{tenant_id}/usage"),
            ("GET", "/admin/v1/quota/drift"),
        ):
            r = await gw.client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers)
            assert r.json()["error"]["code"] == "unauthorized"


async def test_admin_usage_matches_tenant_view(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=9)
    tenant_id = await gw.tenant_id(key)
    await post(gw, key, n=4)
    admin_view = (await gw.client.get(f"/admin/v1/tenants/{tenant_id}/usage", headers=ADMIN)).json()
    assert admin_view == await usage(gw, key)
    assert admin_view["day"]["used"] == 4 and admin_view["in_flight"]["current"] == 1


async def test_drift_check_reports_a_tampered_counter(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=9)
    await post(gw, key, n=2)
    from sqlalchemy import update

    from app.models import QuotaCounter

    async with gw.sessions.begin() as session:
        await session.execute(update(QuotaCounter).where(QuotaCounter.period.like("day:%")).values(amount=7))
    report = await drift(gw)
    assert report["ok"] is False
    assert [(row["counter"][:4], row["stored"], row["expected"]) for row in report["drift"]] == [("day:", 7, 2)]
    other = await gw.tenant_id(await gw.new_tenant("other"))
    only_other = await gw.client.get("/admin/v1/quota/drift", params={"tenant_id": other}, headers=ADMIN)
    assert only_other.json() == {"ok": True, "drift": []}
    only_acme = await gw.client.get(
        "/admin/v1/quota/drift", params={"tenant_id": await gw.tenant_id(key)}, headers=ADMIN
    )
    assert only_acme.json() == report


async def test_quotas_switched_off_reserve_nothing(database_url: str) -> None:
    from tests.fixtures.gateway import running_gateway

    async with running_gateway(database_url, quotas_enabled=False) as gw:
        key = await gw.new_tenant("acme", daily_images=1)
        assert (await post(gw, key, n=3)).status_code == 200
        assert (await usage(gw, key))["day"]["used"] == 0


async def test_refusals_after_the_rate_check_carry_the_rate_headers_too(gw: Harness) -> None:
    key = await gw.new_tenant("acme", submit_rpm=10, daily_images=1)
    assert (await post(gw, key)).status_code == 200
    r = await post(gw, key)
    assert r.status_code == 402
    assert r.headers["x-ratelimit-limit"] == "10" and r.headers["x-ratelimit-remaining"] == "8"
    assert "retry-after" not in r.headers


async def test_two_replicas_recording_the_same_end_settle_it_once(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=10)
    task = (await post(gw, key, n=4)).json()
    now = gw.clock.now()
    failed = {
        "status": "failed",
        "progress": 0,
        "error_code": "generation_failed",
        "error_message": "x",
        "updated_at": now,
        "completed_at": now,
    }
    completed = completed_values(now)
    tasks = gw.tasks
    first, second = await asyncio.gather(tasks._record(task["id"], failed, 0), tasks._record(task["id"], completed, 1))
    assert first.status == second.status  # both callers see the one end that won
    used = (await usage(gw, key))["day"]["used"]
    assert used == (0 if first.status == "failed" else 1)
    assert (await drift(gw))["ok"] is True


async def test_sequential_generation_reserves_the_most_it_can_produce_and_charges_what_it_did(gw: Harness) -> None:
    """`n: 1` with sequential generation up to 15 images can receive 15: it is reserved as 15, not 1."""
    body = {
        "prompt": "a storyboard",
        "n": 1,
        "metadata": {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 15}},
    }
    small = await gw.new_tenant("small", daily_images=10)
    refused = await gw.client.post(URL, headers=bearer(small), json=body)
    assert refused.status_code == 402, refused.text
    assert gw.sandbox_stats()["create"] == 0

    key = await gw.new_tenant("acme", daily_images=20)
    created = await gw.client.post(URL, headers=bearer(key), json=body)
    assert created.status_code == 200, created.text
    assert (await usage(gw, key))["day"]["used"] == 15
    [done] = await finish_all(gw, key, [created.json()["id"]])
    assert done["status"] == "completed"
    produced = len(done["result"]["data"])
    assert produced == 15  # the sandbox, like the upstream, makes max(n, max_images) images
    assert (await usage(gw, key))["day"]["used"] == produced
    assert (await drift(gw))["ok"] is True


@pytest.fixture
def clean_postgres(postgres_database: str) -> str:
    from tests.fixtures.databases import truncate_all

    truncate_all(postgres_database)
    return postgres_database


async def test_admission_commits_never_leave_a_pooled_connection_asynchronous(clean_postgres: str) -> None:
    """The admission statement commits without waiting for its disk flush when the submit writes again before it
    answers (app/tasks/admission.py); the setting must end with that statement, or every later commit on the
    pooled connection would be asynchronous too."""
    from contextlib import AsyncExitStack

    from sqlalchemy import text

    from tests.fixtures.gateway import running_gateway

    async with running_gateway(clean_postgres) as gw:
        key = await gw.new_tenant("acme", daily_images=100, max_in_flight=50)
        answers = await asyncio.gather(*(post(gw, key) for _ in range(6)))
        assert [a.status_code for a in answers] == [200] * 6
        engine = gw.kernel.engine
        pooled = engine.pool.checkedin()  # type: ignore[attr-defined]
        assert pooled >= 1
        async with AsyncExitStack() as stack:  # every pooled connection at once, so none is missed
            connections = [await stack.enter_async_context(engine.connect()) for _ in range(pooled)]
            settings = [(await c.execute(text("SHOW synchronous_commit"))).scalar() for c in connections]
        assert settings == ["on"] * pooled
        assert (await usage(gw, key))["day"]["used"] == 6


async def test_ends_racing_submits_keep_the_books_the_slots_and_the_events_exact(gw: Harness) -> None:
    """Tasks ending (settle, slot freed, webhook event: one statement on PostgreSQL, app/tasks/ending.py) while the
    same tenant submits on the same key, and each end recorded twice at once: no deadlock, each end counted once."""
    from sqlalchemy import func, select, update

    from app.models import Tenant, WebhookDelivery

    key = await gw.new_tenant("acme", daily_images=100, max_in_flight=100)
    tenant_id = await gw.tenant_id(key)
    async with gw.sessions.begin() as session:
        await session.execute(update(Tenant).where(Tenant.id == tenant_id).values(webhook_url="https://hooks.test/a"))
    first = [(await post(gw, key, n=2)).json()["id"] for _ in range(8)]
    now = gw.clock.now()
    completed = completed_values(now)
    ends = [gw.tasks._record(task_id, completed, 1) for task_id in first for _ in range(2)]
    results = await asyncio.gather(*ends, *(post(gw, key, n=2) for _ in range(8)))
    later = [r for r in results if isinstance(r, httpx.Response)]
    assert [r.status_code for r in later] == [200] * 8
    body = await usage(gw, key)
    assert body["day"]["used"] == 8 * 1 + 8 * 2  # the ended ones charged what they made, the new ones reserved
    assert body["in_flight"]["current"] == 8
    keys = (await gw.client.get("/admin/v1/upstream-keys", headers=ADMIN)).json()["data"]
    assert sum(k["in_flight"] for k in keys) == 8
    async with gw.sessions() as session:
        events = await session.scalar(
            select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.task_id.in_(first))
        )
    assert events == len(first)  # one final event per ended task, to the tenant's URL
    assert (await drift(gw))["ok"] is True
