"""Tenants and tenant keys through the ASGI app: the admin API, rotation with grace, expiry, scopes, revocation,
disable/enable/delete, batched last use, re-keying under a new GATEWAY_SECRET_KEY. One fake clock, no sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select

from app.core.errors import Unauthorized
from app.core.security import KeyMaterial
from app.models import InvalidationEvent, TenantKey
from app.tasks.reconciler import Reconciler
from app.tenants.service import TenantService
from tests.fixtures.gateway import ADMIN_TOKEN, SECRET_KEY, Harness, running_gateway

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
URL = "/v1/images/generations"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def admin(gw: Harness, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return await gw.client.request(method, f"/admin/v1{path}", headers=ADMIN, **kwargs)


async def ok(gw: Harness, method: str, path: str, status: int = 200, **kwargs: Any) -> dict[str, Any]:
    r = await admin(gw, method, path, **kwargs)
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


async def new_tenant(gw: Harness, name: str = "acme", **body: Any) -> dict[str, Any]:
    return await ok(gw, "POST", "/tenants", 201, json={"name": name, **body})


async def new_key(gw: Harness, tenant: str, **body: Any) -> dict[str, Any]:
    return await ok(gw, "POST", f"/tenants/{tenant}/keys", 201, json=body)


async def status_with(gw: Harness, key: str) -> int:
    """What an authenticated read answers with this key (200 works, 401 refused, 403 lacks the scope)."""
    return (await gw.client.get("/v1/usage", headers=bearer(key))).status_code


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]


# --- the admin API's shapes ---------------------------------------------------------------------------------------
async def test_create_a_tenant_shows_its_first_key_once(gw: Harness) -> None:
    created = await new_tenant(gw, "  acme  ", limits={"daily_images": 5})
    assert created["object"] == "tenant" and created["name"] == "acme" and created["status"] == "active"
    assert created["limits"]["daily_images"] == 5
    key = created["key"]
    assert key["object"] == "tenant_key" and key["tenant_id"] == created["id"] and key["status"] == "active"
    assert key["key"].startswith("sk-gw-") and len(key["key"]) >= len("sk-gw-") + 43  # 32 random bytes
    assert key["prefix"] == key["key"][:10] and key["scopes"] == ["submit", "read"] and key["expires_at"] is None
    assert await status_with(gw, key["key"]) == 200

    shown = await ok(gw, "GET", f"/tenants/{created['id']}")
    assert shown == {k: v for k, v in created.items() if k != "key"}
    assert await ok(gw, "GET", "/tenants/acme") == shown  # by name too
    keys = await ok(gw, "GET", f"/tenants/{created['id']}/keys")
    assert keys["object"] == "list" and keys["next_cursor"] is None
    assert [k["id"] for k in keys["data"]] == [key["id"]] and "key" not in keys["data"][0]


async def test_new_tenants_take_the_default_limits_unless_given(database_url: str) -> None:
    async with running_gateway(database_url, default_daily_images=50, default_max_in_flight=4) as gw:
        created = await new_tenant(gw, limits={"max_in_flight": None, "query_rpm": 7})
        assert created["limits"] == {
            "daily_images": 50,
            "monthly_images": None,
            "max_in_flight": None,
            "submit_rpm": None,
            "query_rpm": 7,
        }


async def test_lists_are_paginated_with_an_opaque_cursor(gw: Harness) -> None:
    ids = [(await new_tenant(gw, f"t{i}"))["id"] for i in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await ok(gw, "GET", "/tenants", params=params)
        assert len(page["data"]) <= 2
        seen += [t["id"] for t in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids) and pages == 3

    for _ in range(3):
        await new_key(gw, ids[0])
    first = await ok(gw, "GET", f"/tenants/{ids[0]}/keys", params={"limit": 3})
    assert len(first["data"]) == 3 and first["next_cursor"] == first["data"][-1]["id"]
    rest = await ok(gw, "GET", f"/tenants/{ids[0]}/keys", params={"limit": 3, "cursor": first["next_cursor"]})
    assert len(rest["data"]) == 1 and rest["next_cursor"] is None

    for params in ({"limit": 0}, {"limit": 201}, {"cursor": "not a cursor!"}, {"cursor": "x" * 41}):
        assert_error(await admin(gw, "GET", "/tenants", params=params), 400, "invalid_request")


async def test_refusals_are_in_the_error_envelope(gw: Harness) -> None:
    tenant = await new_tenant(gw)
    await new_tenant(gw, "globex")
    assert_error(await admin(gw, "POST", "/tenants", json={"name": "acme"}), 409, "conflict")
    assert_error(await admin(gw, "PATCH", "/tenants/globex", json={"name": "acme"}), 409, "conflict")
    for name in ("bad\x00name", "   ", "", "x" * 201, "tab\there"):
        assert_error(await admin(gw, "POST", "/tenants", json={"name": name}), 400, "invalid_request")
    assert_error(await admin(gw, "POST", "/tenants", json={"name": "n", "extra": 1}), 400, "invalid_request")
    assert_error(await admin(gw, "GET", "/tenants/nobody"), 404, "tenant_not_found")
    assert_error(await admin(gw, "GET", "/tenants/%00"), 404, "tenant_not_found")
    assert_error(await admin(gw, "POST", "/tenants/nobody/keys", json={}), 404, "tenant_not_found")
    assert_error(await admin(gw, "DELETE", "/keys/key_nope"), 404, "key_not_found")
    assert_error(await admin(gw, "POST", "/keys/%00/rotate", json={}), 404, "key_not_found")
    assert_error(await admin(gw, "PATCH", f"/tenants/{tenant['id']}", json={"status": "gone"}), 400, "invalid_request")
    keys = f"/tenants/{tenant['id']}/keys"
    bodies: list[dict[str, Any]] = [
        {"scopes": []},
        {"scopes": ["write"]},
        {"scopes": ["read", "read"]},
        {"expires_in_s": 0},
        {"expires_at": 10, "expires_in_s": 10},
        {"name": "nul\x00"},
        {"grace_seconds": 1},
    ]
    for body in bodies:
        assert_error(await admin(gw, "POST", keys, json=body), 400, "invalid_request")
    key_id = tenant["key"]["id"]
    for grace in (-1, 30 * 86400 + 1, "60", 1.5):
        r = await admin(gw, "POST", f"/keys/{key_id}/rotate", json={"grace_seconds": grace})
        assert_error(r, 400, "invalid_request")
    past = int(gw.clock.time())
    assert_error(await admin(gw, "POST", keys, json={"expires_at": past}), 409, "invalid_expiry")
    # A tenant key is no admin credential.
    r = await gw.client.get("/admin/v1/tenants", headers=bearer(tenant["key"]["key"]))
    assert_error(r, 401, "unauthorized")


async def test_a_405_lists_every_method_of_the_path(gw: Harness) -> None:
    r = await gw.client.options("/admin/v1/tenants/ten_x", headers=ADMIN)
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"DELETE", "GET", "PATCH"}
    r = await gw.client.put("/admin/v1/tenants", headers=ADMIN)
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "POST"}


# --- keys: several, expiry, scopes, rotation, revocation ----------------------------------------------------------
async def test_a_tenant_can_hold_several_active_keys(gw: Harness) -> None:
    tenant = await new_tenant(gw)
    second = await new_key(gw, tenant["id"], name="ci")
    third = await new_key(gw, "acme", name="laptop")
    keys = [tenant["key"]["key"], second["key"], third["key"]]
    assert len(set(keys)) == 3
    assert [await status_with(gw, k) for k in keys] == [200, 200, 200]
    listed = (await ok(gw, "GET", f"/tenants/{tenant['id']}/keys"))["data"]
    assert [(k["name"], k["status"]) for k in listed] == [("", "active"), ("ci", "active"), ("laptop", "active")]


async def test_a_key_stops_working_when_it_expires(gw: Harness) -> None:
    tenant = await new_tenant(gw)
    by_delay = await new_key(gw, tenant["id"], expires_in_s=60)
    at_time = await new_key(gw, tenant["id"], expires_at=int(gw.clock.time()) + 30)
    assert by_delay["expires_at"] == int(gw.clock.time()) + 60
    gw.clock.advance(29)
    assert [await status_with(gw, k["key"]) for k in (by_delay, at_time)] == [200, 200]
    gw.clock.advance(1)  # expires_at <= now: refused
    assert [await status_with(gw, k["key"]) for k in (by_delay, at_time)] == [200, 401]
    gw.clock.advance(30)
    r = await gw.client.get("/v1/usage", headers=bearer(by_delay["key"]))
    assert_error(r, 401, "unauthorized")
    assert r.json()["error"]["message"] == "Invalid API key"
    assert await status_with(gw, tenant["key"]["key"]) == 200  # the tenant's other key never expires
    statuses = {k["id"]: k["status"] for k in (await ok(gw, "GET", "/tenants/acme/keys"))["data"]}
    assert statuses == {tenant["key"]["id"]: "active", by_delay["id"]: "expired", at_time["id"]: "expired"}
    assert_error(await admin(gw, "POST", f"/keys/{by_delay['id']}/rotate", json={}), 409, "key_expired")


async def test_rotation_keeps_the_old_key_until_the_grace_period_ends(gw: Harness) -> None:
    tenant = await new_tenant(gw)
    old = tenant["key"]
    new = await ok(gw, "POST", f"/keys/{old['id']}/rotate", json={"grace_seconds": 600})
    assert new["key"].startswith("sk-gw-") and new["key"] != old["key"] and new["id"] != old["id"]
    assert new["rotated_from_id"] == old["id"] and new["tenant_id"] == tenant["id"] and new["status"] == "active"
    assert await status_with(gw, new["key"]) == 200  # at once
    assert await status_with(gw, old["key"]) == 200
    gw.clock.advance(599)
    assert await status_with(gw, old["key"]) == 200
    gw.clock.advance(1)
    assert await status_with(gw, old["key"]) == 401
    assert await status_with(gw, new["key"]) == 200
    listed = {k["id"]: k for k in (await ok(gw, "GET", "/tenants/acme/keys"))["data"]}
    assert listed[old["id"]]["status"] == "expired" and listed[new["id"]]["status"] == "active"
    assert "key" not in listed[new["id"]]


async def test_rotation_keeps_name_and_scopes_and_never_extends_an_expiry(gw: Harness) -> None:
    tenant = await new_tenant(gw)
    old = await new_key(gw, tenant["id"], name="ci", scopes=["read"], expires_in_s=100)
    new = await ok(gw, "POST", f"/keys/{old['id']}/rotate", json={"grace_seconds": 3600})
    assert (new["name"], new["scopes"]) == ("ci", ["read"])
    assert new["expires_at"] == int(gw.clock.time()) + 100  # the same lifetime as the old key
    gw.clock.advance(99)
    assert await status_with(gw, old["key"]) == 200
    gw.clock.advance(1)
    assert await status_with(gw, old["key"]) == 401  # its own expiry, before the grace period ends
    immediate = await ok(gw, "POST", f"/keys/{tenant['key']['id']}/rotate", json={"grace_seconds": 0})
    assert await status_with(gw, tenant["key"]["key"]) == 401
    assert await status_with(gw, immediate["key"]) == 200
    default = await ok(gw, "POST", f"/keys/{immediate['id']}/rotate")  # no body: one hour of grace
    gw.clock.advance(3599)
    assert await status_with(gw, immediate["key"]) == 200
    gw.clock.advance(1)
    assert await status_with(gw, immediate["key"]) == 401
    assert await status_with(gw, default["key"]) == 200


async def test_a_revoked_key_is_refused_at_once(gw: Harness) -> None:
    tenant = await new_tenant(gw)
    spare = await new_key(gw, tenant["id"])
    revoked = await ok(gw, "DELETE", f"/keys/{spare['id']}")
    assert revoked["status"] == "revoked" and revoked["revoked_at"] == int(gw.clock.time()) and "key" not in revoked
    assert await status_with(gw, spare["key"]) == 401
    assert await status_with(gw, tenant["key"]["key"]) == 200
    again = await ok(gw, "DELETE", f"/keys/{spare['id']}")  # idempotent
    assert again["revoked_at"] == revoked["revoked_at"]
    assert_error(await admin(gw, "POST", f"/keys/{spare['id']}/rotate", json={}), 409, "key_revoked")


async def test_scopes_limit_what_a_key_may_do(gw: Harness) -> None:
    tenant = await new_tenant(gw)
    full = tenant["key"]["key"]
    reader = (await new_key(gw, tenant["id"], scopes=["read"]))["key"]
    submitter = (await new_key(gw, tenant["id"], scopes=["submit"]))["key"]

    task = await gw.client.post(URL, headers=bearer(submitter), json={"prompt": "a fox"})
    assert task.status_code == 200, task.text
    task_url = f"{URL}/{task.json()['id']}"
    for refused in (
        await gw.client.post(URL, headers=bearer(reader), json={"prompt": "a fox"}),
        await gw.client.post("/v1/uploads/images", headers=bearer(reader), files={"file": ("a.png", b"x")}),
        await gw.client.get(task_url, headers=bearer(submitter)),
        await gw.client.get("/v1/usage", headers=bearer(submitter)),
    ):
        assert_error(refused, 403, "forbidden")
        assert refused.json()["error"]["type"] == "permission_error"
    assert (await gw.client.get(task_url, headers=bearer(reader))).status_code == 200
    assert await status_with(gw, reader) == 200
    assert (await gw.client.get(task_url, headers=bearer(full))).status_code == 200
    assert gw.sandbox_stats()["create"] == 1  # the refused submit never reached the upstream


async def test_disabling_a_tenant_refuses_its_keys_and_lets_its_tasks_settle(gw: Harness) -> None:
    tenant = await new_tenant(gw, limits={"max_in_flight": 1})
    key = tenant["key"]["key"]
    spare = (await new_key(gw, tenant["id"]))["key"]
    task = await gw.client.post(URL, headers=bearer(key), json={"prompt": "a fox"})
    assert task.status_code == 200

    disabled = await ok(gw, "PATCH", f"/tenants/{tenant['id']}", json={"status": "disabled"})
    assert disabled["status"] == "disabled"
    assert [await status_with(gw, k) for k in (key, spare)] == [401, 401]
    gw.clock.advance(3600)
    assert await Reconciler(gw.tasks, interval_s=5).run_once() == 1  # settles all the same

    enabled = await ok(gw, "PATCH", "/tenants/acme", json={"status": "active"})
    assert enabled["status"] == "active"
    assert [await status_with(gw, k) for k in (key, spare)] == [200, 200]
    done = (await gw.client.get(f"{URL}/{task.json()['id']}", headers=bearer(key))).json()
    assert done["status"] == "completed"
    usage = (await gw.client.get("/v1/usage", headers=bearer(key))).json()
    assert usage["in_flight"]["current"] == 0  # the slot was freed while the tenant was disabled


async def test_rename_and_no_op_updates(gw: Harness) -> None:
    tenant = await new_tenant(gw)
    renamed = await ok(gw, "PATCH", "/tenants/acme", json={"name": "acme-corp"})
    assert renamed["name"] == "acme-corp" and renamed["id"] == tenant["id"]
    assert_error(await admin(gw, "GET", "/tenants/acme"), 404, "tenant_not_found")
    unchanged = await ok(gw, "PATCH", "/tenants/acme-corp", json={})
    assert unchanged == renamed


@pytest.mark.parametrize("spoof", ["\u202e", "\u2066", "\u200f", "\x9b", "\x7f"])
async def test_names_that_would_spoof_a_listing_are_refused(gw: Harness, spoof: str) -> None:
    """A right-to-left override makes `acme` + U+202E + `1-nimda` read as `acmeadmin-1` in a listing."""
    tenant = await new_tenant(gw)
    name = f"acme{spoof}1-nimda"
    for method, path, body in (
        ("POST", "/tenants", {"name": name}),
        ("PATCH", "/tenants/acme", {"name": name}),
        ("POST", f"/tenants/{tenant['id']}/keys", {"name": name}),
    ):
        r = await admin(gw, method, path, json=body)
        assert_error(r, 400, "invalid_request")
        assert r.json()["error"]["param"] == "name"
    assert [t["name"] for t in (await ok(gw, "GET", "/tenants"))["data"]] == ["acme"]


async def test_deleting_a_tenant_keeps_its_ledger_and_hides_it(gw: Harness) -> None:
    tenant = await new_tenant(gw)
    other = await new_tenant(gw, "globex")
    key = tenant["key"]["key"]
    assert (await gw.client.post(URL, headers=bearer(key), json={"prompt": "a fox"})).status_code == 200
    deleted = await ok(gw, "DELETE", f"/tenants/{tenant['id']}")
    assert deleted["status"] == "deleted" and deleted["id"] == tenant["id"]
    assert await status_with(gw, key) == 401
    for method, path in (
        ("GET", f"/tenants/{tenant['id']}"),
        ("GET", "/tenants/acme"),
        ("PATCH", f"/tenants/{tenant['id']}"),
        ("DELETE", f"/tenants/{tenant['id']}"),
        ("GET", f"/tenants/{tenant['id']}/keys"),
        ("GET", f"/tenants/{tenant['id']}/limits"),
        ("GET", f"/tenants/{tenant['id']}/usage"),
    ):
        r = await admin(gw, method, path, **({"json": {}} if method == "PATCH" else {}))
        assert_error(r, 404, "tenant_not_found")
    assert_error(await admin(gw, "DELETE", f"/keys/{tenant['key']['id']}"), 404, "key_not_found")
    assert [t["id"] for t in (await ok(gw, "GET", "/tenants"))["data"]] == [other["id"]]
    r = await admin(gw, "POST", "/tenants", json={"name": "acme"})
    assert_error(r, 409, "conflict")
    assert "deleted" in r.json()["error"]["message"]
    gw.clock.advance(3600)
    assert await Reconciler(gw.tasks, interval_s=5).run_once() == 1  # its task still settles


async def test_every_change_records_an_invalidation_event(gw: Harness) -> None:
    tenant = await new_tenant(gw)
    key_id = tenant["key"]["id"]
    spare = await new_key(gw, tenant["id"])
    await ok(gw, "POST", f"/keys/{key_id}/rotate", json={"grace_seconds": 60})
    await ok(gw, "DELETE", f"/keys/{spare['id']}")
    await ok(gw, "PATCH", "/tenants/acme", json={"status": "disabled"})
    await ok(gw, "PUT", "/tenants/acme/limits", json={"daily_images": 3})
    await ok(gw, "DELETE", "/tenants/acme")
    async with gw.sessions() as session:
        stmt = select(InvalidationEvent.topic, InvalidationEvent.key).order_by(InvalidationEvent.id)
        rows = (await session.execute(stmt.where(InvalidationEvent.topic.in_(["tenant", "tenant_key"])))).all()
    events = [(topic, key) for topic, key in rows]
    assert events == [
        ("tenant_key", key_id),
        ("tenant_key", spare["id"]),
        ("tenant", tenant["id"]),
        ("tenant", tenant["id"]),
        ("tenant", tenant["id"]),
    ]


# --- last use, batched --------------------------------------------------------------------------------------------
async def test_last_use_is_written_in_batches_not_per_request(gw: Harness) -> None:
    tenant = await new_tenant(gw)
    first, second = tenant["key"], await new_key(gw, tenant["id"])
    updates: list[tuple[str, bool]] = []

    def count(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE TENANT_KEYS"):
            updates.append((statement, many))

    engine = gw.kernel.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(5):
            assert await status_with(gw, first["key"]) == 200
        gw.clock.advance(7)
        assert await status_with(gw, second["key"]) == 200
        used_at = int(gw.clock.time())
        assert updates == []  # no write per request
        async with gw.sessions() as session:
            stored = (await session.execute(select(func.count()).where(TenantKey.last_used_at.is_not(None)))).scalar()
        assert stored == 0
        # A listing already shows what this process noted.
        listed = {k["id"]: k["last_used_at"] for k in (await ok(gw, "GET", "/tenants/acme/keys"))["data"]}
        assert listed == {first["id"]: used_at - 7, second["id"]: used_at}

        assert await gw.tenants.flush_last_used() == 2
        assert len(updates) == 1  # one statement for the batch (executemany)
        assert await gw.tenants.flush_last_used() == 0  # nothing new: no statement
        assert len(updates) == 1
    finally:
        event.remove(engine, "before_cursor_execute", count)
    async with gw.sessions() as session:
        rows = dict((await session.execute(select(TenantKey.id, TenantKey.last_used_at))).all())
    assert {k: v and int(v.timestamp()) for k, v in rows.items()} == {first["id"]: used_at - 7, second["id"]: used_at}

    # A later flush never moves a key's last use backwards, and stopping writes what is left.
    gw.clock.advance(5)
    assert await status_with(gw, first["key"]) == 200
    await gw.tenants.aclose()
    async with gw.sessions() as session:
        stored_use = await session.scalar(select(TenantKey.last_used_at).where(TenantKey.id == first["id"]))
    assert stored_use is not None and stored_use.timestamp() == used_at + 5


async def test_the_background_writer_flushes_by_itself(gw: Harness) -> None:
    service = TenantService(gw.sessions, gw.kernel.keys, gw.clock.now, last_used_interval_s=0.01)
    _, key = await service.create("acme")
    try:
        await service.authenticate(f"Bearer {key}")  # starts the writer
        for _ in range(500):  # bounded wait for the writer's first cycle (no fixed sleep decides the outcome)
            async with gw.sessions() as session:
                used = (await session.execute(select(TenantKey.last_used_at))).scalar_one()
            if used is not None:
                break
            await _tick()
        assert used is not None and used == gw.clock.now()
    finally:
        await service.aclose()


async def _tick() -> None:
    await asyncio.sleep(0.01)


# --- GATEWAY_SECRET_KEY rotation ----------------------------------------------------------------------------------
OLD_SECRET = "old-secret-key-for-tests-0123456789abcdef"


async def test_keys_hashed_under_a_previous_secret_work_and_are_rekeyed(database_url: str) -> None:
    async with running_gateway(database_url, previous_secret_keys=OLD_SECRET) as gw:
        _, key = await TenantService(gw.sessions, KeyMaterial(OLD_SECRET), gw.clock.now).create("acme")
        current = KeyMaterial(SECRET_KEY)
        current_only = TenantService(gw.sessions, current, gw.clock.now)
        with pytest.raises(Unauthorized):  # without the previous secret, the old hash matches nothing
            await current_only.authenticate(f"Bearer {key}")
        async with gw.sessions() as session:
            before = (await session.execute(select(TenantKey))).scalar_one()
        assert before.hash_key_id == KeyMaterial(OLD_SECRET).key_id

        assert await status_with(gw, key) == 200  # the gateway knows the previous secret
        async with gw.sessions() as session:
            after = (await session.execute(select(TenantKey))).scalar_one()
            events = (await session.execute(select(InvalidationEvent.key))).scalars().all()
        assert (after.key_hash, after.hash_key_id) == (current.hash_tenant_key(key), current.key_id)
        assert after.id in events
        assert await status_with(gw, key) == 200
        # Re-keyed: the previous secret is no longer needed for this key.
        assert (await current_only.authenticate(f"Bearer {key}")).name == "acme"


@pytest.mark.parametrize("token", ["sk-gw-" + "x" * 600, "sk-gw-unknown"])
async def test_unknown_or_oversized_tokens_are_401(gw: Harness, token: str) -> None:
    r = await gw.client.get("/v1/usage", headers=bearer(token))
    assert_error(r, 401, "unauthorized")


# --- no secret echoed ---------------------------------------------------------------------------------------------
async def test_no_answer_but_the_one_that_makes_a_key_carries_it(gw: Harness) -> None:
    answers: list[httpx.Response] = []

    async def call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        r = await admin(gw, method, path, **kwargs)
        answers.append(r)
        assert r.status_code < 300, r.text
        body: dict[str, Any] = r.json()
        return body

    created = await call("POST", "/tenants", json={"name": "acme"})
    made = [created["key"]["key"]]
    made.append((await call("POST", f"/tenants/{created['id']}/keys", json={"name": "ci"}))["key"])
    rotated = await call("POST", f"/keys/{created['key']['id']}/rotate", json={"grace_seconds": 5})
    made.append(rotated["key"])
    await call("GET", "/tenants")
    await call("GET", f"/tenants/{created['id']}")
    await call("GET", f"/tenants/{created['id']}/keys")
    await call("PATCH", f"/tenants/{created['id']}", json={"status": "disabled"})
    await call("DELETE", f"/keys/{rotated['id']}")
    await call("GET", "/audit")
    creating = {0, 1, 2}
    for index, answer in enumerate(answers):
        for n, secret in enumerate(made):
            assert (secret in answer.text) == (index == n and index in creating), (index, answer.text)
        assert ADMIN_TOKEN not in answer.text and SECRET_KEY not in answer.text
    async with gw.sessions() as session:
        hashes = (await session.execute(select(TenantKey.key_hash))).scalars().all()
    assert all(h not in answer.text for h in hashes for answer in answers)
