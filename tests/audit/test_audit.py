"""The audit log: every admin action through the API writes one event in the transaction of its change (refusals
in their own), read newest first with filters and a cursor; no secret value in any event."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.audit.service import record_audit
from app.models import AuditEvent, TenantKey
from tests.fixtures.gateway import ADMIN_TOKEN, SECRET_KEY, Harness

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def admin(gw: Harness, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return await gw.client.request(method, f"/admin/v1{path}", headers=ADMIN, **kwargs)


async def ok(gw: Harness, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    r = await admin(gw, method, path, **kwargs)
    assert r.status_code < 300, r.text
    body: dict[str, Any] = r.json()
    return body


async def audit(gw: Harness, **params: Any) -> dict[str, Any]:
    return await ok(gw, "GET", "/audit", params=params)


async def test_every_admin_action_is_audited_newest_first(gw: Harness) -> None:
    tenant = await ok(gw, "POST", "/tenants", json={"name": "acme"})
    tid, first = tenant["id"], tenant["key"]["id"]
    gw.clock.advance(1)
    extra = await ok(gw, "POST", f"/tenants/{tid}/keys", json={"name": "ci", "scopes": ["read"]})
    rotated = await ok(gw, "POST", f"/keys/{first}/rotate", json={"grace_seconds": 60})
    await ok(gw, "DELETE", f"/keys/{extra['id']}")
    await ok(gw, "PUT", f"/tenants/{tid}/limits", json={"daily_images": 5})
    await ok(gw, "PATCH", f"/tenants/{tid}", json={"name": "acme-corp"})
    await ok(gw, "PATCH", f"/tenants/{tid}", json={"status": "disabled"})
    await ok(gw, "PATCH", f"/tenants/{tid}", json={"status": "active"})
    await ok(gw, "DELETE", f"/tenants/{tid}")

    events = (await audit(gw))["data"]
    assert [(e["action"], e["target_type"], e["target_id"]) for e in events] == [
        ("tenant.delete", "tenant", tid),
        ("tenant.enable", "tenant", tid),
        ("tenant.disable", "tenant", tid),
        ("tenant.update", "tenant", tid),
        ("limits.update", "tenant", tid),
        ("key.revoke", "tenant_key", extra["id"]),
        ("key.rotate", "tenant_key", first),
        ("key.create", "tenant_key", extra["id"]),
        ("tenant.create", "tenant", tid),
    ]
    assert {(e["object"], e["actor"], e["outcome"]) for e in events} == {("audit_event", "admin-token", "ok")}
    assert events[-1]["created_at"] == int(gw.clock.time()) - 1 and events[0]["created_at"] == int(gw.clock.time())
    by_action = {e["action"]: e["detail"] for e in events}
    assert by_action["tenant.create"]["name"] == "acme" and by_action["tenant.create"]["key_id"] == first
    assert by_action["key.create"] == {"tenant_id": tid, "name": "ci", "scopes": ["read"], "expires_at": None}
    assert by_action["key.rotate"]["new_key_id"] == rotated["id"] and by_action["key.rotate"]["grace_seconds"] == 60
    assert by_action["limits.update"] == {"changes": {"daily_images": 5}}
    assert by_action["tenant.update"] == {"changes": {"name": {"from": "acme", "to": "acme-corp"}}}
    assert by_action["tenant.disable"] == {"changes": {"status": {"from": "active", "to": "disabled"}}}


async def test_filters_and_pagination(gw: Harness) -> None:
    a = (await ok(gw, "POST", "/tenants", json={"name": "a"}))["id"]
    b = (await ok(gw, "POST", "/tenants", json={"name": "b"}))["id"]
    for limit in (1, 2):
        await ok(gw, "PUT", f"/tenants/{a}/limits", json={"daily_images": limit})
    only_a = (await audit(gw, target_id=a))["data"]
    assert [e["action"] for e in only_a] == ["limits.update", "limits.update", "tenant.create"]
    creates = (await audit(gw, action="tenant.create"))["data"]
    assert [e["target_id"] for e in creates] == [b, a]
    assert (await audit(gw, action="nothing.like.this"))["data"] == []

    seen: list[int] = []
    cursor = None
    while True:
        page = await audit(gw, limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [e["id"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    everything = [e["id"] for e in (await audit(gw, limit=200))["data"]]
    assert seen == everything == sorted(everything, reverse=True) and len(seen) == 4

    for params in ({"limit": 0}, {"limit": 201}, {"cursor": "abc"}, {"target_id": "a\x00b"}, {"action": "x" * 65}):
        r = await admin(gw, "GET", "/audit", params=params)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text


async def test_refused_actions_are_audited_and_their_changes_are_not(gw: Harness) -> None:
    await ok(gw, "POST", "/tenants", json={"name": "acme"})
    assert (await admin(gw, "POST", "/tenants", json={"name": "acme"})).status_code == 409
    assert (await admin(gw, "PATCH", "/tenants/nobody", json={"status": "disabled"})).status_code == 404
    assert (await admin(gw, "DELETE", "/keys/key_nope")).status_code == 404
    pasted = "sk-gw-" + "s" * 43  # a key pasted where a tenant was expected is never stored
    assert (await admin(gw, "POST", f"/tenants/{pasted}/keys", json={})).status_code == 404
    events = (await audit(gw))["data"]
    assert [(e["action"], e["target_id"], e["outcome"], e["detail"]) for e in events] == [
        ("key.create", "[redacted]", "refused", {"error": "tenant_not_found", "status": 404}),
        ("key.revoke", "key_nope", "refused", {"error": "key_not_found", "status": 404}),
        ("tenant.update", "nobody", "refused", {"error": "tenant_not_found", "status": 404}),
        ("tenant.create", "acme", "refused", {"error": "conflict", "status": 409}),
        ("tenant.create", events[-1]["target_id"], "ok", events[-1]["detail"]),
    ]


async def test_an_event_commits_or_rolls_back_with_its_change(gw: Harness) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with gw.sessions.begin() as session:
            await record_audit(session, actor="cli", action="x.y", target_type="t", target_id="1", now=gw.clock.now())
            raise Boom
    async with gw.sessions.begin() as session:
        await record_audit(
            session,
            actor="cli",
            action="x.z",
            target_type="t",
            target_id="nul\x00" + "x" * 100,  # cleaned and cut to fit its column on both databases
            detail={"note": "tab\there", "nested": [1, {"k": "\x00"}]},
            now=gw.clock.now(),
        )
    async with gw.sessions() as session:
        rows = (await session.execute(select(AuditEvent))).scalars().all()
    assert [(r.action, r.outcome) for r in rows] == [("x.z", "ok")]
    assert rows[0].target_id is not None and len(rows[0].target_id) == 64 and "\x00" not in rows[0].target_id
    assert rows[0].detail == {"note": "tab\ufffdhere", "nested": [1, {"k": "\ufffd"}]}


async def test_no_secret_in_any_audit_event(gw: Harness) -> None:
    tenant = await ok(gw, "POST", "/tenants", json={"name": "acme"})
    secrets = [tenant["key"]["key"]]
    secrets.append((await ok(gw, "POST", f"/tenants/{tenant['id']}/keys", json={}))["key"])
    secrets.append((await ok(gw, "POST", f"/keys/{tenant['key']['id']}/rotate", json={}))["key"])
    await ok(gw, "PATCH", f"/tenants/{tenant['id']}", json={"status": "disabled"})
    async with gw.sessions() as session:
        secrets += (await session.execute(select(TenantKey.key_hash))).scalars().all()
        events = (await session.execute(select(AuditEvent))).scalars().all()
        assert (await session.execute(select(func.count()).select_from(AuditEvent))).scalar() == 4
    dumped = json.dumps(
        [[e.actor, e.action, e.target_type, e.target_id, e.outcome, e.detail] for e in events], ensure_ascii=False
    )
    listed = (await admin(gw, "GET", "/audit")).text
    for secret in [*secrets, ADMIN_TOKEN, SECRET_KEY]:
        assert secret not in dumped and secret not in listed


async def test_the_audit_log_needs_the_admin_token(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    for headers in ({}, {"Authorization": f"Bearer {key}"}):
        r = await gw.client.get("/admin/v1/audit", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


async def _all_events(gw: Harness) -> list[AuditEvent]:
    async with gw.sessions() as session:
        return list((await session.execute(select(AuditEvent).order_by(AuditEvent.id))).scalars().all())


async def test_a_webhook_secret_never_reaches_the_audit_log(gw: Harness) -> None:
    """Redacted as a tenant key is: in the answer that made it only, never in an event's target or detail, even
    when an operator pastes it where a tenant belongs or names a tenant with it."""
    tid = (await ok(gw, "POST", "/tenants", json={"name": "acme"}))["id"]
    first = (await ok(gw, "PUT", f"/tenants/{tid}/webhook", json={"url": "https://93.184.215.14/hook"}))["secret"]
    second = (await ok(gw, "PUT", f"/tenants/{tid}/webhook", json={"rotate_secret": True}))["secret"]
    assert first.startswith("whsec_") and second.startswith("whsec_") and first != second
    for method, path in (("PUT", "/webhook"), ("DELETE", "/webhook"), ("POST", "/webhook/test")):
        r = await admin(gw, method, f"/tenants/{second}{path}", **({"json": {}} if method == "PUT" else {}))
        assert r.status_code == 404, r.text
    await ok(gw, "PATCH", f"/tenants/{tid}", json={"name": first})  # the operator's choice; its audit says less

    events = await _all_events(gw)
    dumped = json.dumps(
        [[e.actor, e.action, e.target_type, e.target_id, e.outcome, e.detail] for e in events], ensure_ascii=False
    )
    listed = (await admin(gw, "GET", "/audit")).text
    for secret in (first, second):
        assert secret not in dumped and secret not in listed
    refused = [(e.action, e.target_id) for e in events if e.outcome == "refused"]
    assert refused == [(action, "[redacted]") for action in ("webhook.update", "webhook.delete", "webhook.test")]
    renamed = [e.detail for e in events if e.action == "tenant.update"]
    assert renamed == [{"changes": {"name": {"from": "acme", "to": "[redacted]"}}}]


async def test_every_refusal_is_audited_with_the_same_detail_keys(gw: Harness) -> None:
    assert (await admin(gw, "DELETE", "/keys/key_nope")).status_code == 404
    assert (await admin(gw, "DELETE", "/tenants/nobody/webhook")).status_code == 404
    assert (await admin(gw, "POST", "/upstream-keys/upk_nope/drain")).status_code == 404
    refused = [(e.action, e.target_id, e.detail) for e in await _all_events(gw) if e.outcome == "refused"]
    assert refused == [
        ("key.revoke", "key_nope", {"error": "key_not_found", "status": 404}),
        ("webhook.delete", "nobody", {"error": "tenant_not_found", "status": 404}),
        ("upstream_key.drain", "upk_nope", {"error": "not_found", "status": 404}),
    ]


async def test_the_actions_own_error_wins_over_a_failing_audit_write(
    gw: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the audit log unwritable, a refused action is still answered with its own refusal (the upstream keys'
    once became the audit write's error, a 500); a change that cannot be audited is not made."""
    tenant = await ok(gw, "POST", "/tenants", json={"name": "acme"})

    class AuditDown(Exception):
        pass

    async def failing_insert(session: Any, event: AuditEvent) -> None:
        raise AuditDown

    monkeypatch.setattr("app.audit.repository.insert", failing_insert)
    for method, path, code in (
        ("DELETE", "/keys/key_nope", "key_not_found"),
        ("PATCH", "/tenants/nobody", "tenant_not_found"),
        ("DELETE", "/tenants/nobody/webhook", "tenant_not_found"),
        ("POST", "/upstream-keys/upk_nope/drain", "not_found"),
        ("DELETE", "/upstream-keys/upk_nope", "not_found"),
    ):
        r = await admin(gw, method, path, **({"json": {"name": "x"}} if method == "PATCH" else {}))
        assert r.status_code == 404 and r.json()["error"]["code"] == code, (path, r.text)
    with pytest.raises(AuditDown):
        await gw.tenants.revoke_key(tenant["key"]["id"], actor="cli")
    monkeypatch.undo()
    assert [e.outcome for e in await _all_events(gw)] == ["ok"]  # the tenant's creation only
    keys = (await ok(gw, "GET", f"/tenants/{tenant['id']}/keys"))["data"]
    assert [k["status"] for k in keys] == ["active"]  # the revocation rolled back with its event
