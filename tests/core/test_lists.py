"""Every list of the ops API answers one way (app/core/pagination.py): `{"object": "list", "data", "next_cursor"}`,
one limit rule (1 to 200, else a 400 naming `limit`: never clamped, through the API or a service), and one cursor
codec (a cursor made up or taken from another list is a 400 naming `cursor`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.audit.service import AuditService
from app.core.errors import InvalidRequest
from app.tasks.ledger import TaskLedger
from app.upstream.service import UpstreamKeyService
from app.webhooks.service import WebhookService
from tests.fixtures.gateway import ADMIN_TOKEN, Harness

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def lists(gw: Harness) -> dict[str, str]:
    """Each list's URL -> the id of one of its rows (a cursor it would hand out)."""
    key = await gw.new_tenant("acme")
    tenant_id = await gw.tenant_id(key)
    keys = (await gw.client.get(f"/admin/v1/tenants/{tenant_id}/keys", headers=ADMIN)).json()["data"]
    upstream = (await gw.client.get("/admin/v1/upstream-keys", headers=ADMIN)).json()["data"]
    audit = (await gw.client.get("/admin/v1/audit", headers=ADMIN)).json()["data"]
    return {
        "/admin/v1/tenants": tenant_id,
        f"/admin/v1/tenants/{tenant_id}/keys": keys[0]["id"],
        "/admin/v1/upstream-keys": upstream[0]["id"],
        "/admin/v1/audit": str(audit[0]["id"]),
        "/admin/v1/webhook-deliveries": "evt_" + "0" * 32,
        "/admin/v1/tasks": "task_img_" + "0" * 32,
    }


async def test_every_list_answers_one_way(gw: Harness) -> None:
    for url in await lists(gw):
        r = await gw.client.get(url, headers=ADMIN, params={"limit": 1})
        assert r.status_code == 200, (url, r.text)
        body = r.json()
        assert body["object"] == "list" and isinstance(body["data"], list) and "next_cursor" in body, (url, body)
        assert len(body["data"]) <= 1


async def test_every_list_refuses_a_limit_out_of_range_and_a_foreign_cursor(gw: Harness) -> None:
    rows = await lists(gw)
    for url, own in rows.items():
        for limit in (0, 201, 10_000):
            r = await gw.client.get(url, headers=ADMIN, params={"limit": limit})
            assert r.status_code == 400 and r.json()["error"]["param"] == "limit", (url, limit, r.text)
        for other_url, other in rows.items():
            if other_url != url:
                r = await gw.client.get(url, headers=ADMIN, params={"cursor": other})
                assert r.status_code == 400 and r.json()["error"]["param"] == "cursor", (url, other, r.text)
        assert (await gw.client.get(url, headers=ADMIN, params={"cursor": own})).status_code == 200, url


async def test_services_refuse_what_the_api_refuses(gw: Harness) -> None:
    """The command line calls the services directly: the same rule, no clamping (the audit log and the upstream
    keys once clamped a limit the other lists refused)."""
    kernel = gw.kernel
    calls: dict[str, Callable[..., Awaitable[Any]]] = {
        "tenants": gw.tenants.list_tenants,
        "audit": AuditService(kernel.sessions, kernel.clock).list,
        "upstream keys": UpstreamKeyService(kernel.sessions, kernel.keys, kernel.clock).list,
        "tasks": TaskLedger(kernel.sessions).list,
    }
    webhooks: WebhookService = gw.app.state.webhooks
    calls["deliveries"] = webhooks.list_deliveries
    for name, call in calls.items():
        for limit in (0, 201, 500):
            with pytest.raises(InvalidRequest) as refused:
                await call(limit=limit)
            assert refused.value.param == "limit", name
        with pytest.raises(InvalidRequest) as refused:
            await call(cursor="not a cursor")
        assert refused.value.param == "cursor", name
        assert (await call(limit=200)).object == "list", name


async def test_a_page_ends_where_the_rows_end(gw: Harness) -> None:
    ids = sorted([await gw.tenant_id(await gw.new_tenant(f"t{i}")) for i in range(4)])  # ids made in one ms: any order
    first = await gw.tenants.list_tenants(limit=2)
    assert [t.id for t in first.data] == ids[:2] and first.next_cursor is not None
    rest = await gw.tenants.list_tenants(limit=2, cursor=first.next_cursor)
    assert [t.id for t in rest.data] == ids[2:] and rest.next_cursor is None  # exactly full: no empty last page
    assert (await gw.tenants.list_tenants(limit=200)).next_cursor is None
