"""A key change made through one replica takes effect on another within docs/quotas-and-keys.md's bound (1 s).

Two real `serve` processes on one PostgreSQL: revoke a key through A's ops API, B refuses it; rotate through A with
no grace, B refuses the old key and takes the new one; disable the tenant through A, B refuses its keys.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.e2e.conftest import Gateway, Processes, Sandbox, gateway_env, http_client, start_gateways

pytestmark = pytest.mark.e2e

BOUND_S = 1.0
# What a busy CI machine may add between the ops call's answer and our first request to B (scheduling, not the
# gateway): the bound is checked against the time B first refused, measured from the ops call's answer.
SLACK_S = 2.0


async def _status(client: httpx.AsyncClient, replica: Gateway, key: str) -> int:
    r = await client.get(f"{replica.url}/v1/usage", headers={"Authorization": f"Bearer {key}"})
    return r.status_code


async def _refused_within(client: httpx.AsyncClient, replica: Gateway, key: str, since: float) -> float:
    """Seconds from `since` until B answers 401 to `key` (polled every 50 ms)."""
    while True:
        r = await client.get(f"{replica.url}/v1/usage", headers={"Authorization": f"Bearer {key}"})
        if r.status_code == 401:
            return time.monotonic() - since
        assert r.status_code == 200, r.text
        assert time.monotonic() - since < BOUND_S + SLACK_S, "the change never reached the other replica"
        await asyncio.sleep(0.05)


async def test_revoke_rotate_and_disable_reach_the_other_replica(
    clean_postgres: str, sandbox: Sandbox, processes: Processes
) -> None:
    env = gateway_env(clean_postgres, sandbox.url)
    pending = processes.spawn_tenant("acme", env)
    a, b = start_gateways(processes, env, ["replica-a", "replica-b"])
    tenant = a.tenant(pending)
    admin = {"Authorization": f"Bearer {env['GATEWAY_ADMIN_TOKEN']}"}
    async with http_client() as client:
        assert (
            await client.get(f"{b.url}/v1/usage", headers={"Authorization": f"Bearer {tenant.key}"})
        ).status_code == 200

        # revoke on A -> refused on B
        created = await client.post(f"{a.url}/admin/v1/tenants/{tenant.id}/keys", headers=admin, json={"name": "ci"})
        assert created.status_code == 201, created.text
        second = created.json()
        assert (
            await client.get(f"{b.url}/v1/usage", headers={"Authorization": f"Bearer {second['key']}"})
        ).status_code == 200
        revoked = await client.delete(f"{a.url}/admin/v1/keys/{second['id']}", headers=admin)
        assert revoked.status_code == 200, revoked.text
        assert await _refused_within(client, b, second["key"], time.monotonic()) <= BOUND_S + SLACK_S

        # rotate on A without grace -> the old key refused on B, the new one accepted there
        keys = (await client.get(f"{a.url}/admin/v1/tenants/{tenant.id}/keys", headers=admin)).json()["data"]
        first_id = next(k["id"] for k in keys if k["id"] != second["id"])
        rotated = await client.post(
            f"{a.url}/admin/v1/keys/{first_id}/rotate", headers=admin, json={"grace_seconds": 0}
        )
        assert rotated.status_code in (200, 201), rotated.text
        assert await _refused_within(client, b, tenant.key, time.monotonic()) <= BOUND_S + SLACK_S
        new_key = rotated.json()["key"]
        assert (
            await client.get(f"{b.url}/v1/usage", headers={"Authorization": f"Bearer {new_key}"})
        ).status_code == 200

        # disable the tenant on A -> its keys refused on B
        disabled = await client.patch(
            f"{a.url}/admin/v1/tenants/{tenant.id}", headers=admin, json={"status": "disabled"}
        )
        assert disabled.status_code == 200, disabled.text
        assert await _refused_within(client, b, new_key, time.monotonic()) <= BOUND_S + SLACK_S
