"""`serve` with GATEWAY_ADMIN_PORT: one process listening on two sockets, /admin on the admin one only."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import HOST, Processes, Sandbox, free_port, gateway_env, http_client, start_gateway

pytestmark = pytest.mark.e2e


async def test_serve_answers_admin_on_its_own_port_only(
    clean_postgres: str, processes: Processes, sandbox: Sandbox
) -> None:
    admin_port = free_port()
    env = gateway_env(clean_postgres, sandbox.url, GATEWAY_ADMIN_HOST=HOST, GATEWAY_ADMIN_PORT=str(admin_port))
    gateway = start_gateway(processes, env)
    admin = {"Authorization": f"Bearer {env['GATEWAY_ADMIN_TOKEN']}"}
    async with http_client() as client:
        hidden = await client.get(f"{gateway.url}/admin/v1/tenants", headers=admin)
        assert hidden.status_code == 404, hidden.text
        made = await client.post(f"http://{HOST}:{admin_port}/admin/v1/tenants", headers=admin, json={"name": "acme"})
        assert made.status_code == 201, made.text
        key = made.json()["key"]["key"]
        usage = await client.get(f"{gateway.url}/v1/usage", headers={"Authorization": f"Bearer {key}"})
        assert usage.status_code == 200, usage.text
        assert (await client.get(f"http://{HOST}:{admin_port}/v1/usage")).status_code == 404
        assert (await client.get(f"http://{HOST}:{admin_port}/admin/ui/sign-in")).status_code == 200
        assert (await client.get(f"http://{HOST}:{admin_port}/healthz")).status_code == 200
