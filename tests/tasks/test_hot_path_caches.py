"""The hot path's caches (issue 8): a warm status call does no database work, and every change still holds.

In-process. The statements counted are the ones the requests send through the app's
engine; the background loops' own, which run on their own timers whatever the requests do, are left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from tests.fixtures.gateway import ADMIN_TOKEN, Harness, completed_task, key_known, running_gateway, until_fresh

URL = "/v1/images/generations"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def statements(gw: Harness) -> Iterator[list[str]]:
    """The SQL the requests made in the block send: statements sent from this test's own asyncio task (httpx's ASGI
    transport runs the app in it). The background loops run in tasks of their own (the invalidator's reads, the
    batched last-use write, a key reload after an invalidation event...), on timers that a busy machine shifts into
    any window."""
    seen: list[str] = []
    requests_task = asyncio.current_task()

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if asyncio.current_task() is requests_task:
            seen.append(statement)

    engine = gw.kernel.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


async def test_a_warm_completed_task_status_makes_no_database_call(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    task_id = await completed_task(gw, key)
    await until_fresh(gw)
    first = await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))  # warms the key and the answer
    assert first.status_code == 200
    await key_known(gw, key)
    with statements(gw) as sent:
        answers = [await gw.client.get(f"{URL}/{task_id}", headers=bearer(key)) for _ in range(5)]
    assert sent == []
    assert all(r.status_code == 200 and r.json() == first.json() for r in answers)
    assert first.json()["status"] == "completed" and first.json()["result"]["data"]
    assert first.headers["content-type"] == "application/json"


async def test_a_cold_status_reads_the_ledger_once(gw: Harness) -> None:
    """With the key warm and the answer not, the call costs one read of the task (in autocommit: no BEGIN, which
    bench/hot_path.py counts on the wire)."""
    key = await gw.new_tenant("acme")
    task_id = await completed_task(gw, key)
    gw.tasks._answers = type(gw.tasks._answers)(gw.tasks._refresh_interval)  # forget the answers
    await until_fresh(gw)
    await gw.client.get("/v1/usage", headers=bearer(key))  # warms the key only
    await key_known(gw, key)
    with statements(gw) as sent:
        r = await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))
    assert r.status_code == 200
    assert [s.split()[0] for s in sent] == ["SELECT"], sent


async def test_an_open_task_answer_is_kept_only_until_its_next_refresh(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    r = await gw.client.post(URL, headers=bearer(key), json={"prompt": "a fox"})
    task_id = r.json()["id"]
    await until_fresh(gw)
    gw.clock.advance(2)
    assert (await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))).json()["status"] == "in_progress"
    refreshes = gw.sandbox_stats()["status"]
    await key_known(gw, key)
    with statements(gw) as sent:
        for _ in range(5):  # within the refresh interval: memory
            assert (await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))).status_code == 200
    assert sent == [] and gw.sandbox_stats()["status"] == refreshes
    gw.clock.advance(10)  # past the interval, and past the task's end upstream
    assert (await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))).json()["status"] == "completed"
    assert gw.sandbox_stats()["status"] == refreshes + 1


async def test_another_tenants_cached_task_stays_a_404(gw: Harness) -> None:
    owner = await gw.new_tenant("acme")
    other = await gw.new_tenant("globex")
    task_id = await completed_task(gw, owner)
    await until_fresh(gw)
    await gw.client.get(f"{URL}/{task_id}", headers=bearer(owner))
    r = await gw.client.get(f"{URL}/{task_id}", headers=bearer(other))
    assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"


@pytest.mark.parametrize("change", ["revoke", "rotate", "disable", "limits"])
async def test_a_change_holds_at_once_on_the_replica_that_made_it_with_caches_warm(gw: Harness, change: str) -> None:
    key = await gw.new_tenant("acme", query_rpm=None)
    tenant_id = await gw.tenant_id(key)
    task_id = await completed_task(gw, key)
    await until_fresh(gw)
    for _ in range(3):
        assert (await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))).status_code == 200
    keys = (await gw.client.get(f"/admin/v1/tenants/{tenant_id}/keys", headers=ADMIN)).json()["data"]
    key_id = keys[0]["id"]
    expected = 401
    if change == "revoke":
        r = await gw.client.delete(f"/admin/v1/keys/{key_id}", headers=ADMIN)
    elif change == "rotate":
        r = await gw.client.post(f"/admin/v1/keys/{key_id}/rotate", headers=ADMIN, json={"grace_seconds": 0})
    elif change == "disable":
        r = await gw.client.patch(f"/admin/v1/tenants/{tenant_id}", headers=ADMIN, json={"status": "disabled"})
    else:
        r = await gw.client.put(f"/admin/v1/tenants/{tenant_id}/limits", headers=ADMIN, json={"query_rpm": 1})
        expected = 200  # the first query of the minute is allowed, the second is refused
    assert r.status_code in (200, 201), r.text
    answer = await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))
    assert answer.status_code == expected, answer.text
    if change == "limits":
        assert answer.headers["X-RateLimit-Limit"] == "1"
        assert (await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))).status_code == 429


async def test_a_revocation_on_one_replica_reaches_a_warm_other_within_the_bound(database_url: str) -> None:
    """Two apps on one database (two replicas): B's cache is warm, A revokes, B refuses within the stated bound.

    The bound is counted in B's own invalidation reads, not in seconds (no timed assertion): B refuses after one
    read that began after the revocation committed; its loop makes one every 0.25 s (Invalidator.bound_s = 0.5 s).
    The same with real processes, in seconds: tests/e2e/test_key_changes_reach_replicas.py."""
    async with running_gateway(database_url) as a, running_gateway(database_url) as b:
        key = await a.new_tenant("acme")
        task_id = await completed_task(a, key)
        await until_fresh(b)
        for _ in range(3):
            assert (await b.client.get(f"{URL}/{task_id}", headers=bearer(key))).status_code == 200
        tenant_id = await a.tenant_id(key)
        key_id = (await a.client.get(f"/admin/v1/tenants/{tenant_id}/keys", headers=ADMIN)).json()["data"][0]["id"]
        assert (await a.client.delete(f"/admin/v1/keys/{key_id}", headers=ADMIN)).status_code == 200
        # One read of B's invalidator that starts after the commit (its loop also reads on its own timer).
        await b.app.state.invalidator.poll_once()
        assert (await b.client.get(f"{URL}/{task_id}", headers=bearer(key))).status_code == 401


async def test_the_fast_path_answers_byte_for_byte_as_the_route_does(
    gw: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = await gw.new_tenant("acme")
    task_id = await completed_task(gw, key)
    await until_fresh(gw)
    # One request id on both calls: it comes back on every answer (app/core/observe.py), the fast path's included.
    headers = {**bearer(key), "X-Request-ID": "same-request-id"}
    routed = await gw.client.get(f"{URL}/{task_id}", headers=headers)  # the route, which fills the cache

    async def not_routed(*_: Any) -> bytes:
        raise AssertionError("a warm status call reached the route")

    monkeypatch.setattr(gw.tasks, "status_answer", not_routed)
    await key_known(gw, key)  # the routed call may have taken longer than the freshness bound on a busy machine
    fast = await gw.client.get(f"{URL}/{task_id}", headers=headers)
    assert fast.status_code == routed.status_code == 200
    assert fast.content == routed.content
    assert dict(fast.headers) == dict(routed.headers)
    assert fast.headers["x-request-id"] == "same-request-id"


@pytest.mark.parametrize("case", ["query limit", "no read scope", "query string", "unknown key", "other tenant"])
async def test_what_the_fast_path_leaves_to_the_route(gw: Harness, case: str) -> None:
    """Each of these goes the usual way (and gets the usual answer): the fast path adds no rule of its own."""
    key = await gw.new_tenant("acme")
    task_id = await completed_task(gw, key)
    tenant_id = await gw.tenant_id(key)
    await until_fresh(gw)
    await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))  # key and answer warm
    url, caller, expected = f"{URL}/{task_id}", key, 200
    if case == "query limit":
        r = await gw.client.put(f"/admin/v1/tenants/{tenant_id}/limits", headers=ADMIN, json={"query_rpm": 100})
        assert r.status_code == 200
    elif case == "no read scope":
        r = await gw.client.post(
            f"/admin/v1/tenants/{tenant_id}/keys", headers=ADMIN, json={"name": "w", "scopes": ["submit"]}
        )
        caller, expected = r.json()["key"], 403
        await gw.client.get(f"{URL}/{task_id}", headers=bearer(caller))  # known now, still without the scope
    elif case == "query string":
        url = f"{URL}/{task_id}?x=1"
    elif case == "unknown key":
        caller, expected = "sk-gw-" + "0" * 43, 401
    else:
        caller, expected = await gw.new_tenant("globex"), 404
    calls = 0
    route = gw.tasks.status_answer

    async def counted(*args: Any) -> bytes:
        nonlocal calls
        calls += 1
        return await route(*args)

    gw.tasks.status_answer = counted  # type: ignore[method-assign]
    r = await gw.client.get(url, headers=bearer(caller))
    assert r.status_code == expected, r.text
    if case == "query limit":
        assert r.headers["X-RateLimit-Limit"] == "100" and calls == 1
    elif case in ("query string", "other tenant"):
        assert calls == 1
