"""The reconciler: open tasks that nobody polls end and settle by themselves; interrupted submits are kept."""

from __future__ import annotations

import datetime as dt

from app.contract import GenerationRequest
from app.core.ids import new_id
from app.models import Task
from app.models.task import TaskStatus
from app.quotas import service as quotas
from app.tasks import admission
from app.tasks import repository as tasks_repo
from app.tasks.reconciler import Reconciler
from tests.fixtures.gateway import ADMIN_TOKEN, Harness

URL = "/v1/images/generations"


async def test_unpolled_tasks_end_and_free_the_in_flight_slot(gw: Harness) -> None:
    key = await gw.new_tenant("acme", max_in_flight=2, daily_images=10)
    auth = {"Authorization": f"Bearer {key}"}
    ok = await gw.client.post(URL, headers=auth, json={"prompt": "a fox", "n": 2})
    failing = await gw.client.post(URL, headers=auth, json={"prompt": "a fox [fault:fail]", "n": 3})
    assert ok.status_code == failing.status_code == 200
    assert (await gw.client.post(URL, headers=auth, json={"prompt": "third"})).status_code == 429
    poller = Reconciler(gw.tasks, interval_s=5)
    gw.clock.advance(11)
    assert await poller.run_once() == 2
    assert gw.sandbox_stats()["status"] == 2
    usage = (await gw.client.get("/v1/usage", headers=auth)).json()
    assert usage["in_flight"]["current"] == 0 and usage["day"]["used"] == 2
    done = (await gw.client.get(f"{URL}/{ok.json()['id']}", headers=auth)).json()
    assert done["status"] == "completed"
    assert gw.sandbox_stats()["status"] == 2  # answered from the ledger
    assert await poller.run_once() == 0


async def test_recently_polled_tasks_are_left_alone(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    auth = {"Authorization": f"Bearer {key}"}
    task = (await gw.client.post(URL, headers=auth, json={"prompt": "a fox"})).json()
    gw.clock.advance(4)
    await gw.client.get(f"{URL}/{task['id']}", headers=auth)
    calls = gw.sandbox_stats()["status"]
    gw.clock.advance(2)
    assert await Reconciler(gw.tasks, interval_s=5).run_once() == 0
    assert gw.sandbox_stats()["status"] == calls
    gw.clock.advance(8)  # the next look is 5-10 s after the caller's
    assert await Reconciler(gw.tasks, interval_s=5).run_once() == 1
    assert gw.sandbox_stats()["status"] == calls + 1


async def _interrupted_submit(gw: Harness, key: str) -> str:
    """What a process that died during the upstream create call leaves behind: the row admitted as submit admits it
    (its reservation and its slot on a key), and no answer."""
    now = gw.clock.now()
    tenant = await gw.tenants.authenticate(f"Bearer {key}")
    task = Task(
        id=new_id("task_img_"),
        tenant_id=tenant.id,
        model="doubao-seedream-4-0",
        request=GenerationRequest(prompt="interrupted", n=3).to_upstream(),  # reserves 3: the charge then
        n=3,
        progress=0,
        created_at=now,
        updated_at=now,
    )
    reservation = quotas.reservation(tenant, task.id, 3, now)
    submit_deadline = now + dt.timedelta(seconds=70)  # what submit sets: longer than any create call lasts
    upstream_key = gw.tasks._pool.choose()
    async with gw.tasks._autocommit.connect() as connection:
        assert await admission.admit(
            connection, task, reservation, upstream_key.id, check_sent=submit_deadline, check_waiting=submit_deadline
        )
    assert task.status == TaskStatus.SUBMITTING
    return task.id


async def test_an_interrupted_submit_is_never_refunded_silently(gw: Harness) -> None:
    """A process that died during the create call may have made (and been billed for) the task upstream: after the
    submit deadline the task is flagged outcome-unknown with its reservation kept, never resent; at the task
    deadline it fails with the reservation charged, and ops see it all along."""
    key = await gw.new_tenant("acme", max_in_flight=1, daily_images=3)
    auth = {"Authorization": f"Bearer {key}"}
    task_id = await _interrupted_submit(gw, key)
    assert (await gw.client.post(URL, headers=auth, json={"prompt": "blocked"})).status_code == 402
    reconciler = Reconciler(gw.tasks, interval_s=5)
    gw.clock.advance(69)
    assert await reconciler.run_once() == 0  # may still be in flight on another replica
    gw.clock.advance(2)
    assert await reconciler.run_once() == 1
    row = await _row(gw, task_id)
    assert row.outcome_unknown and row.status == TaskStatus.SUBMITTING
    # Ops see what stays unresolved, and what it may cost.
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    listed = (await gw.client.get("/admin/v1/tasks", headers=admin, params={"outcome_unknown": "true"})).json()
    assert [t["id"] for t in listed["data"]] == [task_id]
    assert listed["data"][0]["may_cost_images"] == 3
    assert listed["unresolved"] == 1 and listed["unresolved_images"] == 3
    body = (await gw.client.get(f"{URL}/{task_id}", headers=auth)).json()
    assert body["status"] == "queued"
    creates = gw.sandbox_stats()["create"]
    gw.clock.advance(60)
    assert await reconciler.run_once() == 0  # nothing to do before the deadline: never resent
    assert gw.sandbox_stats()["create"] == creates
    gw.clock.advance(30 * 60)
    assert await reconciler.run_once() == 1
    body = (await gw.client.get(f"{URL}/{task_id}", headers=auth)).json()
    assert body["status"] == "failed" and body["error"]["code"] == "submit_outcome_unknown"
    usage = (await gw.client.get("/v1/usage", headers=auth)).json()
    assert usage["day"]["used"] == 3 and usage["in_flight"]["current"] == 0  # charged, slot free
    failed = (await gw.client.get("/admin/v1/tasks", headers=admin, params={"status": "failed"})).json()
    assert [t["id"] for t in failed["data"]] == [task_id] and failed["unresolved"] == 0
    drift = await gw.client.get("/admin/v1/quota/drift", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert drift.json() == {"ok": True, "drift": []}


async def _row(gw: Harness, task_id: str) -> Task:
    async with gw.sessions() as session:
        row = await tasks_repo.get(session, task_id)
    assert row is not None
    return row


async def test_a_claim_takes_each_tenant_s_most_overdue_first_and_fills_up(gw: Harness) -> None:
    """A lone busy tenant's due tasks fill a claim; with several tenants due, each one's most overdue task comes
    before anyone's second."""
    big = await gw.new_tenant("big", max_in_flight=100)
    small = await gw.new_tenant("small")
    big_ids = [
        (await gw.client.post(URL, headers={"Authorization": f"Bearer {big}"}, json={"prompt": "a fox"})).json()["id"]
        for _ in range(12)
    ]
    gw.clock.advance(11)
    small_id = (await gw.client.post(URL, headers={"Authorization": f"Bearer {small}"}, json={"prompt": "x"})).json()[
        "id"
    ]
    gw.clock.advance(11)  # every task is due; the small tenant's is the least overdue
    claimed = await gw.tasks.claim_due("test-owner", 3, dt.timedelta(seconds=60))
    ids = [t.id for t in claimed]
    assert small_id in ids  # the first of its tenant: before the big one's second
    assert len(ids) == 3 and set(ids) - {small_id} <= set(big_ids)
    await gw.tasks.release_leases([t.id for t in claimed], "test-owner")
    claimed = await gw.tasks.claim_due("test-owner", 50, dt.timedelta(seconds=60))
    assert sorted(t.id for t in claimed) == sorted([*big_ids, small_id])  # a lone busy tenant fills the claim
    assert all(t.lease_owner == "test-owner" for t in claimed)  # the rows as the lease left them
