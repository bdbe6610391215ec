"""The task lifecycle (issue 9) in-process: idempotent submits, tasks that wait for the
upstream and are sent later by the reconciler (once, whatever the replicas), and their deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.routing import Mount

from app.main import create_app
from app.models import Task
from app.sandbox.app import create_sandbox_app
from app.sandbox.config import SandboxConfig
from app.tasks.reconciler import Reconciler
from app.upstream.feature import SANDBOX_MOUNT
from tests.fixtures.clock import FakeClock
from tests.fixtures.gateway import ADMIN_TOKEN, Harness, running_gateway
from tests.fixtures.gateway import test_settings as gateway_settings
from tests.support.served import served

URL = "/v1/images/generations"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def headers(key: str, idempotency_key: str | None = None) -> dict[str, str]:
    found = {"Authorization": f"Bearer {key}"}
    if idempotency_key is not None:
        found["Idempotency-Key"] = idempotency_key
    return found


async def usage(gw: Harness, key: str) -> dict[str, Any]:
    body: dict[str, Any] = (await gw.client.get("/v1/usage", headers=headers(key))).json()
    return body


async def task_count(gw: Harness) -> int:
    async with gw.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(Task))).scalar_one())


async def test_the_same_key_and_body_answer_the_same_task_and_charge_once(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=10)
    first = await gw.client.post(URL, headers=headers(key, "order-1"), json={"prompt": "a fox", "n": 2})
    again = await gw.client.post(URL, headers=headers(key, "order-1"), json={"n": 2, "prompt": "a fox"})
    assert first.status_code == again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert gw.sandbox_stats()["create"] == 1
    assert (await usage(gw, key))["day"]["used"] == 2
    other = await gw.client.post(URL, headers=headers(key, "order-2"), json={"prompt": "a fox", "n": 2})
    assert other.json()["id"] != first.json()["id"]


async def test_the_same_key_with_another_body_is_409(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    assert (await gw.client.post(URL, headers=headers(key, "k"), json={"prompt": "a fox"})).status_code == 200
    r = await gw.client.post(URL, headers=headers(key, "k"), json={"prompt": "a cat"})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "idempotency_key_reused"
    assert r.json()["error"]["param"] == "Idempotency-Key"
    assert gw.sandbox_stats()["create"] == 1


async def test_keys_are_per_tenant_and_expire_after_a_day(gw: Harness) -> None:
    acme, globex = await gw.new_tenant("acme"), await gw.new_tenant("globex")
    a = await gw.client.post(URL, headers=headers(acme, "shared"), json={"prompt": "a fox"})
    b = await gw.client.post(URL, headers=headers(globex, "shared"), json={"prompt": "a fox"})
    assert a.json()["id"] != b.json()["id"]
    gw.clock.advance(24 * 3600 + 1)
    c = await gw.client.post(URL, headers=headers(acme, "shared"), json={"prompt": "a cat"})
    assert c.status_code == 200 and c.json()["id"] != a.json()["id"]


async def test_a_bad_idempotency_key_is_400(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    for bad in ("", "x" * 256, "with space"):
        r = await gw.client.post(URL, headers=headers(key, bad), json={"prompt": "a fox"})
        assert r.status_code == 400, (bad, r.text)
    assert gw.sandbox_stats()["create"] == 0


async def test_twenty_concurrent_submits_with_one_key_on_two_replicas_make_one_task(database_url: str) -> None:
    async with running_gateway(database_url) as a, running_gateway(database_url) as b:
        key = await a.new_tenant("acme", daily_images=100)
        body = {"prompt": "a fox", "n": 3}
        answers = await asyncio.gather(
            *[(a if i % 2 else b).client.post(URL, headers=headers(key, "once"), json=body) for i in range(20)]
        )
        assert {r.status_code for r in answers} == {200}, [r.text for r in answers if r.status_code != 200]
        assert len({r.json()["id"] for r in answers}) == 1
        assert await task_count(a) == 1
        assert (await usage(a, key))["day"]["used"] == 3
        creates = a.sandbox_stats()["create"] + b.sandbox_stats()["create"]
        assert creates == 1


async def test_a_waiting_task_is_sent_once_by_the_reconcilers_of_two_replicas(database_url: str) -> None:
    async with running_gateway(database_url) as a, running_gateway(database_url) as b:
        key = await a.new_tenant("acme", daily_images=100)
        a.sandbox_config(rate_limit_rate=1.0)  # A's upstream refuses everything for now
        waiting = [await a.client.post(URL, headers=headers(key), json={"prompt": f"t{i}"}) for i in range(6)]
        assert {r.json()["status"] for r in waiting} == {"queued"}
        a.sandbox_config(rate_limit_rate=0.0)
        # Both replicas' upstream transports reach the same kind of sandbox; each counts its own creates.
        a.clock.advance(120)
        b.clock.advance(120)
        handled = await asyncio.gather(Reconciler(a.tasks, 1).run_once(), Reconciler(b.tasks, 1).run_once())
        assert sum(handled) == 6  # every waiting task leased by exactly one of them
        # One create was refused at submit time (429; the key then cooled, so the other five were not sent), and
        # each task was then created once, by one replica.
        creates = a.sandbox_stats()["create"] + b.sandbox_stats()["create"]
        assert creates == 1 + 6
        statuses = {
            (await a.client.get(f"{URL}/{r.json()['id']}", headers=headers(key))).json()["status"] for r in waiting
        }
        assert statuses <= {"queued", "in_progress"}
        async with a.sessions() as session:
            rows = (await session.execute(select(Task))).scalars().all()
        assert all(row.upstream_task_id is not None and row.status != "waiting" for row in rows)


async def test_a_retry_after_beyond_the_queue_deadline_fails_and_refunds_at_once(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=5)
    gw.sandbox_config(retry_after_seconds=3600, rate_limit_rate=1.0)
    r = await gw.client.post(URL, headers=headers(key), json={"prompt": "a fox"})
    assert r.status_code == 200 and r.json()["status"] == "failed", r.text
    assert r.json()["error"]["code"] == "upstream_unavailable"
    assert (await usage(gw, key))["day"]["used"] == 0


async def test_an_upstream_down_for_a_while_then_back_completes_every_task_charged_once(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=10)
    gw.sandbox_config(error_rate=1.0)  # every create answers 500 for now
    ids = [(await gw.client.post(URL, headers=headers(key), json={"prompt": f"t{i}"})).json()["id"] for i in range(3)]
    reconciler = Reconciler(gw.tasks, 1)
    for _ in range(3):  # still down: the reconciler tries, with backoff, and the tasks keep waiting
        gw.clock.advance(20)
        await reconciler.run_once()
    answers = [(await gw.client.get(f"{URL}/{i}", headers=headers(key))).json() for i in ids]
    assert {a["status"] for a in answers} == {"queued"}
    gw.sandbox_config(error_rate=0.0)  # back
    gw.clock.advance(60)
    await reconciler.run_once()  # sent
    gw.clock.advance(15)
    await reconciler.run_once()  # checked: done upstream
    answers = [(await gw.client.get(f"{URL}/{i}", headers=headers(key))).json() for i in ids]
    assert {a["status"] for a in answers} == {"completed"}
    body = await usage(gw, key)
    assert body["day"]["used"] == 3 and body["in_flight"]["current"] == 0
    drift = await gw.client.get("/admin/v1/quota/drift", headers=ADMIN)
    assert drift.json() == {"ok": True, "drift": []}
    async with gw.sessions() as session:
        rows = (await session.execute(select(Task))).scalars().all()
    assert len({row.upstream_task_id for row in rows}) == 3 and all(row.attempts >= 2 for row in rows)


async def test_ops_list_a_tenants_tasks_by_status_page_by_page(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    other = await gw.new_tenant("globex")
    tenant_id = await gw.tenant_id(key)
    ids = [(await gw.client.post(URL, headers=headers(key), json={"prompt": f"t{i}"})).json()["id"] for i in range(3)]
    await gw.client.post(URL, headers=headers(other), json={"prompt": "theirs"})
    first = await gw.client.get("/admin/v1/tasks", headers=ADMIN, params={"tenant_id": tenant_id, "limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    assert [t["id"] for t in page["data"]] == ids[::-1][:2] and page["next_cursor"]
    rest = await gw.client.get(
        "/admin/v1/tasks", headers=ADMIN, params={"tenant_id": tenant_id, "cursor": page["next_cursor"]}
    )
    assert [t["id"] for t in rest.json()["data"]] == [ids[0]] and rest.json()["next_cursor"] is None
    opened = await gw.client.get("/admin/v1/tasks", headers=ADMIN, params={"status": "open", "tenant_id": tenant_id})
    assert len(opened.json()["data"]) == 3
    assert (await gw.client.get("/admin/v1/tasks", headers=headers(key))).status_code == 401
    assert (await gw.client.get("/admin/v1/tasks", headers=ADMIN, params={"cursor": "x"})).status_code == 400


async def test_ops_list_a_tenants_tasks_by_its_name_and_an_unknown_tenant_is_not_found(gw: Harness) -> None:
    """`tenant_id` takes a name as every other ops call does (it used to answer an empty list)."""
    key = await gw.new_tenant("team-a")
    await gw.new_tenant("team-b")
    task_id = (await gw.client.post(URL, headers=headers(key), json={"prompt": "mine"})).json()["id"]
    by_name = await gw.client.get("/admin/v1/tasks", headers=ADMIN, params={"tenant_id": "team-a"})
    assert by_name.status_code == 200, by_name.text
    assert [t["id"] for t in by_name.json()["data"]] == [task_id] and by_name.json()["object"] == "list"
    unknown = await gw.client.get("/admin/v1/tasks", headers=ADMIN, params={"tenant_id": "team-z"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "tenant_not_found"


@asynccontextmanager
async def demo_gateway(database_url: str, data_dir: Any) -> AsyncIterator[Harness]:
    """A zero-config gateway (its sandbox mounted at /_sandbox, a new one each time, as after a restart)."""
    clock = FakeClock()
    sandbox = create_sandbox_app(SandboxConfig(task_seconds=10, queue_seconds=1, seed=7), clock=clock.time)
    upstream = Starlette(routes=[Mount(SANDBOX_MOUNT, app=sandbox)])
    async with served(upstream) as upstream_url:  # the demo calls its sandbox at its own host and port
        port = int(upstream_url.rsplit(":", 1)[1])
        settings = gateway_settings(database_url, upstream_base_url="", data_dir=data_dir, port=port)
        app = create_app(settings, clock=clock.now)
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://x")
        async with app.router.lifespan_context(app), client:
            yield Harness(client=client, app=app, sandbox=sandbox, clock=clock)


async def test_a_demo_restart_fails_and_refunds_the_tasks_its_sandbox_forgot(database_url: str, tmp_path: Any) -> None:
    """The built-in sandbox keeps its tasks in memory: after a restart of the demo they are gone, and they used to
    stay queued until the 30-minute deadline with a warning at every look."""
    async with demo_gateway(database_url, tmp_path) as before:
        key = await before.new_tenant("acme", daily_images=5)
        r = await before.client.post(URL, headers=headers(key), json={"prompt": "a fox"})
        assert r.status_code == 200, r.text
        task_id = r.json()["id"]
        assert (await usage(before, key))["day"]["used"] == 1
    async with demo_gateway(database_url, tmp_path) as after:
        async with after.sessions() as session:
            task = await session.get(Task, task_id)
        assert task is not None and (task.status, task.error_code) == ("failed", "upstream_task_lost")
        assert (await usage(after, key))["day"]["used"] == 0  # refunded
        answer = (await after.client.get(f"{URL}/{task_id}", headers=headers(key))).json()
        assert answer["status"] == "failed" and answer["error"]["code"] == "upstream_task_lost"
