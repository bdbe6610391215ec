"""The admin surface apart (GATEWAY_ADMIN_PORT): /admin (the ops API and the console) only on its own port, the
tenants' routes only on theirs, the probes on both; and the tenants' CORS never applies to /admin."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.fixtures.gateway import ADMIN_TOKEN, Harness, running_gateway

ADMIN_PORT = 8001
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def apart(database_url: str) -> AsyncIterator[Harness]:
    async with running_gateway(database_url, admin_port=ADMIN_PORT) as harness:
        yield harness


async def test_each_port_serves_its_own_surface(apart: Harness) -> None:
    key = await apart.new_tenant("acme")
    tenants_port = apart.client  # http://gateway.test, port 80
    transport = httpx.ASGITransport(app=apart.app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://gateway.test:{ADMIN_PORT}") as admin_port:
        assert (await admin_port.get("/admin/v1/tenants", headers=ADMIN)).status_code == 200
        assert (await admin_port.get("/admin/ui/sign-in")).status_code == 200
        assert (await admin_port.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})).status_code == 404
        assert (await admin_port.get("/healthz")).status_code == 200
    hidden = await tenants_port.get("/admin/v1/tenants", headers=ADMIN)
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
    assert (await tenants_port.get("/admin/ui/sign-in")).status_code == 404
    assert (await tenants_port.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})).status_code == 200
    assert (await tenants_port.get("/healthz")).status_code == 200


async def test_the_tenants_cors_never_applies_to_admin(database_url: str) -> None:
    async with running_gateway(database_url, cors_origins="*") as gw:
        origin = {"Origin": "https://anywhere.example"}
        tenant = await gw.client.get("/healthz", headers=origin)
        assert tenant.headers.get("access-control-allow-origin") == "https://anywhere.example"  # CORS is on
        admin = await gw.client.get("/admin/v1/tenants", headers={**origin, **ADMIN})
        assert admin.status_code == 200 and "access-control-allow-origin" not in admin.headers
        preflight = await gw.client.options(
            "/admin/v1/tenants", headers={**origin, "Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-origin" not in preflight.headers
        console = await gw.client.get("/admin/ui/sign-in", headers=origin)
        assert "access-control-allow-origin" not in console.headers
