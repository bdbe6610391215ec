"""A gateway killed with SIGKILL while tasks are in flight upstream and waiting in its queue, started again: every
task reaches a terminal state with nobody polling, each is created upstream exactly once, each task's webhook is
delivered (signed), and the tenant is charged exactly the images produced (real processes, PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import make_url

from tests.e2e.conftest import Processes, Sandbox, gateway_env, http_client, start_gateway
from tests.fixtures.webhook_receiver import receiving, signed_by

pytestmark = pytest.mark.e2e

IN_FLIGHT = 4
WAITING = 4
DEADLINE_S = 90.0  # generous: a busy CI machine


async def _ledger(database_url: str) -> list[dict[str, Any]]:
    url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id, status, n, upstream_task_id, attempts FROM tasks ORDER BY created_at")
    finally:
        await conn.close()
    return [dict(row) for row in rows]


async def test_a_gateway_killed_with_tasks_in_flight_and_waiting_loses_nothing(
    clean_postgres: str, sandbox: Sandbox, processes: Processes
) -> None:
    env = gateway_env(
        clean_postgres,
        sandbox.url,
        GATEWAY_POLL_INTERVAL_S="0.3",
        GATEWAY_WEBHOOK_ALLOW_PRIVATE="true",  # the receiver is on 127.0.0.1
        GATEWAY_WEBHOOK_POLL_INTERVAL_S="0.3",
        # The events wait for the kept copies (at most GATEWAY_RESULTS_WEBHOOK_HOLD_S): copied from the sandbox on
        # loopback as from the public upstream, they go once copied instead of after the hold.
        GATEWAY_RESULTS_ALLOW_PRIVATE="true",
        GATEWAY_RESULTS_POLL_INTERVAL_S="0.3",
    )
    pending = processes.spawn_tenant("crash", env)
    first = start_gateway(processes, env, name="doomed")
    tenant = first.tenant(pending)
    admin = {"Authorization": f"Bearer {env['GATEWAY_ADMIN_TOKEN']}"}
    sandbox.configure(hold=True, task_seconds=1.0, queue_seconds=0.2)  # accepted tasks stay open upstream
    async with receiving() as endpoint, http_client() as client:
        configured = processes.run(["webhooks", "set", tenant.id, "--url", endpoint.url, "--json"], env)
        assert configured.returncode == 0, configured.stderr
        secret = configured.json()["secret"]
        accepted = []
        for i in range(IN_FLIGHT):
            r = await client.post(first.generations, headers=tenant.headers, json={"prompt": f"in flight {i}"})
            assert r.status_code == 200, r.text
            accepted.append(r.json()["id"])
        sandbox.configure(rate_limit_rate=1.0, retry_after_seconds=1)  # the upstream now refuses every create
        waiting = []
        for i in range(WAITING):
            r = await client.post(first.generations, headers=tenant.headers, json={"prompt": f"waiting {i}", "n": 2})
            assert r.status_code == 200 and r.json()["status"] == "queued", r.text
            waiting.append(r.json()["id"])
        creates_before_crash = sandbox.stats()["create"]

        os.killpg(first.process.popen.pid, signal.SIGKILL)
        first.process.popen.wait(10)
        sandbox.configure(hold=False, rate_limit_rate=0.0)  # the upstream is well again

        second = start_gateway(processes, env, name="restarted")
        deadline = time.monotonic() + DEADLINE_S
        while True:  # nobody polls: the restarted gateway's reconciler must end every task by itself
            rows = await _ledger(clean_postgres)
            if rows and all(row["status"] in ("completed", "failed") for row in rows):
                break
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.3)

        assert {row["id"] for row in rows} == set(accepted) | set(waiting)
        assert {row["status"] for row in rows} == {"completed"}
        # Each task was created upstream exactly once: the accepted ones before the crash, the waiting ones after.
        assert sandbox.stats()["create"] == creates_before_crash + WAITING
        assert len({row["upstream_task_id"] for row in rows}) == IN_FLIGHT + WAITING
        usage = (await client.get(f"{second.url}/admin/v1/tenants/{tenant.id}/usage", headers=admin)).json()
        assert usage["day"]["used"] == IN_FLIGHT * 1 + WAITING * 2  # exactly the images produced
        assert usage["in_flight"]["current"] == 0
        drift = (await client.get(f"{second.url}/admin/v1/quota/drift", headers=admin)).json()
        assert drift["ok"] is True, drift

        # Each task's end was delivered to the tenant's endpoint, signed (at least once: dedupe on the event id).
        delivered = await endpoint.wait_for(IN_FLIGHT + WAITING, timeout_s=DEADLINE_S)
        assert all(signed_by(request, secret) for request in delivered)
        events = {request.headers["x-toapis-webhook-id"]: json.loads(request.body) for request in endpoint.requests}
        assert {event["data"]["task_id"] for event in events.values()} == set(accepted) | set(waiting)
        assert {event["type"] for event in events.values()} == {"generation.completed"}
