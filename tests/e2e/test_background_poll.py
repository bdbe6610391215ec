"""A task nobody polls still ends and settles, through the gateway's background poller (real processes)."""

from __future__ import annotations

import asyncio
import time

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
