"""A task nobody polls still ends and settles, through the gateway's background poller (real processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, Processes, Sandbox, Tenant, gateway_env, http_client, start_gateway

pytestmark = pytest.mark.e2e


async def _until_nothing_in_flight(
    client: httpx.AsyncClient, gateway: Gateway, tenant: Tenant, admin: dict[str, str], deadline_s: float
) -> dict[str, Any]:
    """The tenant's usage once no task of it is in flight (fails after `deadline_s`)."""
    deadline = time.monotonic() + deadline_s
    while True:
        r = await client.get(f"{gateway.url}/admin/v1/tenants/{tenant.id}/usage", headers=admin)
        usage: dict[str, Any] = r.json()
        if usage["in_flight"]["current"] == 0:
            return usage
        assert time.monotonic() < deadline, usage
        await asyncio.sleep(0.2)


async def test_unpolled_task_settles_in_the_background(
    clean_postgres: str, sandbox: Sandbox, processes: Processes
) -> None:
    env = gateway_env(clean_postgres, sandbox.url, GATEWAY_POLL_INTERVAL_S="0.3")
    pending = processes.spawn_tenant(f"unpolled-{time.monotonic_ns()}", env)
    gateway = start_gateway(processes, env)
    tenant = gateway.tenant(pending)
    admin = {"Authorization": f"Bearer {env['GATEWAY_ADMIN_TOKEN']}"}
    async with http_client() as client:
        r = await client.post(gateway.generations, headers=tenant.headers, json={"prompt": "nobody polls", "n": 2})
        assert r.status_code == 200, r.text
        task_id = r.json()["id"]
        usage = await _until_nothing_in_flight(client, gateway, tenant, admin, deadline_s=15)
        assert usage["day"]["used"] == 2
        before = sandbox.stats()["status_by_task"]
        done = await client.get(f"{gateway.generations}/{task_id}", headers=tenant.headers)
        assert done.json()["status"] == "completed"
        assert sandbox.stats()["status_by_task"] == before  # the ledger already knew


async def test_a_gateway_killed_mid_submit_never_refunds_silently(
    clean_postgres: str, sandbox: Sandbox, processes: Processes
) -> None:
    # The doomed replica waits long for the upstream (it must still be waiting when it is killed, however slow the
    # machine).
    survivor_env = gateway_env(
        clean_postgres,
        sandbox.url,
        GATEWAY_POLL_INTERVAL_S="0.3",
        GATEWAY_UPSTREAM_TIMEOUT_S="1",
        GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S="0.5",
        GATEWAY_TASK_DEADLINE_S="8",
    )
    # 5 s: longer than the test takes to kill it (it kills as soon as the sandbox has the create, polling every
    # 50 ms); the task row's "no create call can still be running" deadline is then 2 x (5 + 2 x 0.5) s = 12 s,
    # after which the survivor looks at it.
    env = {**survivor_env, "GATEWAY_UPSTREAM_TIMEOUT_S": "5"}
    # The create call hangs past the doomed replica's own 5 s timeout, so only the kill ends its wait; and less than
    # the 12 s the test then waits, so the sandbox's handler is over before the module's sandbox is stopped (a
    # handler still sleeping holds its SIGTERM until the harness's SIGKILL, 5 s later).
    sandbox.configure(timeout_seconds=10)
    pending = processes.spawn_tenant("crash", env)
    first = start_gateway(processes, env, name="doomed")
    tenant = first.tenant(pending)
    assert processes.run(["tenants", "limits", tenant.id, "--max-in-flight", "1"], env).returncode == 0
    admin = {"Authorization": f"Bearer {env['GATEWAY_ADMIN_TOKEN']}"}
    async with http_client(timeout=httpx.Timeout(60.0)) as client:
        pending = asyncio.create_task(
            client.post(first.generations, headers={**tenant.headers}, json={"prompt": "doomed [fault:timeout]"})
        )
        deadline = time.monotonic() + 30
        while sandbox.stats()["create"] == 0:
            assert time.monotonic() < deadline, "the submit never reached the sandbox"
            await asyncio.sleep(0.05)
        os.killpg(first.process.popen.pid, signal.SIGKILL)
        first.process.popen.wait(5)
        # The caller never got an answer: the gateway died inside the create call, with nothing recorded after it.
        with pytest.raises(httpx.HTTPError):
            await pending

        # The upstream got the create (and may bill it): the survivor never resends it nor refunds it silently; it
        # is flagged outcome-unknown and, at the task deadline, fails with its reservation charged.
        second = start_gateway(processes, survivor_env, name="survivor")
        usage = await _until_nothing_in_flight(client, second, tenant, admin, deadline_s=150)
        assert usage["day"]["used"] == 1
        assert sandbox.stats()["create"] == 1
        r = await client.post(second.generations, headers=tenant.headers, json={"prompt": "after the crash"})
        assert r.status_code == 200, r.text
