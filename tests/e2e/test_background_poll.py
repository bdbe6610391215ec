"""A task nobody polls still ends and settles, through the gateway's background poller (real processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import httpx
import pytest

from tests.e2e.conftest import Processes, Sandbox, gateway_env, http_client, start_gateway

pytestmark = pytest.mark.e2e


async def test_unpolled_task_settles_in_the_background(
    clean_sqlite: str, sandbox: Sandbox, processes: Processes
) -> None:
    env = gateway_env(clean_sqlite, sandbox.url, GATEWAY_POLL_INTERVAL_S="0.3")
    gateway = start_gateway(processes, env)
    tenant = gateway.tenant(gateway.spawn_tenant(f"unpolled-{time.monotonic_ns()}"))
    admin = {"Authorization": f"Bearer {env['GATEWAY_ADMIN_TOKEN']}"}
    async with http_client() as client:
        r = await client.post(gateway.generations, headers=tenant.headers, json={"prompt": "nobody polls", "n": 2})
        assert r.status_code == 200, r.text
        task_id = r.json()["id"]
        deadline = time.monotonic() + 15
        while True:
            usage = (await client.get(f"{gateway.url}/admin/v1/tenants/{tenant.id}/usage", headers=admin)).json()
            if usage["in_flight"]["current"] == 0:
                break
            assert time.monotonic() < deadline, usage
            await asyncio.sleep(0.2)
        assert usage["day"]["used"] == 2
        before = sandbox.stats()["status_by_task"]
        done = await client.get(f"{gateway.generations}/{task_id}", headers=tenant.headers)
        assert done.json()["status"] == "completed"
        assert sandbox.stats()["status_by_task"] == before  # the ledger already knew


async def test_a_gateway_killed_mid_submit_leaves_no_phantom_reservation(
    clean_sqlite: str, sandbox: Sandbox, processes: Processes
) -> None:
    env = gateway_env(
        clean_sqlite,
        sandbox.url,
        GATEWAY_POLL_INTERVAL_S="0.3",
        GATEWAY_UPSTREAM_TIMEOUT_S="1",
        GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S="0.5",
    )
    first = start_gateway(processes, env, name="doomed")
    tenant = first.tenant(first.spawn_tenant("crash"))
    assert processes.run(["tenants", "limits", tenant.id, "--max-in-flight", "1"], env).returncode == 0
    admin = {"Authorization": f"Bearer {env['GATEWAY_ADMIN_TOKEN']}"}
    async with http_client() as client:
        # The sandbox holds this create call for 30 s; the gateway dies while waiting for it.
        pending = asyncio.create_task(
            client.post(first.generations, headers={**tenant.headers}, json={"prompt": "doomed [fault:timeout]"})
        )
        deadline = time.monotonic() + 10
        while sandbox.stats()["create"] == 0:
            assert time.monotonic() < deadline, "the submit never reached the sandbox"
            await asyncio.sleep(0.05)
        os.killpg(first.process.popen.pid, signal.SIGKILL)
        first.process.popen.wait(5)
        with contextlib.suppress(httpx.HTTPError):
            await pending

        second = start_gateway(processes, env, name="survivor")
        deadline = time.monotonic() + 20
        while True:
            usage = (await client.get(f"{second.url}/admin/v1/tenants/{tenant.id}/usage", headers=admin)).json()
            if usage["in_flight"]["current"] == 0:
                break
            assert time.monotonic() < deadline, usage
            await asyncio.sleep(0.2)
        assert usage["day"]["used"] == 0
        r = await client.post(second.generations, headers=tenant.headers, json={"prompt": "after the crash"})
        assert r.status_code == 200, r.text
