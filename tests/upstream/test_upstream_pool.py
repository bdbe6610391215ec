"""The upstream key pool through the ASGI app, against the in-process sandbox.

Two upstream keys are configured. The sandbox refuses a key with its own `accepted_keys`, and answers 429 to one
key's creates through its own `X-Sandbox-Fault` header, added by a small wrapper in front of it (`PerKeyFaults`):
a fault in the prompt would hit every key the task is retried with. One fake clock drives the gateway and the
sandbox, so cooldowns, probe intervals and task progress are exact and no test sleeps.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from app.main import create_app
from app.models import AuditEvent, Task
from app.sandbox.app import create_sandbox_app
from app.sandbox.config import SandboxConfig, key_fingerprint
from app.upstream.feature import Upstream
from tests.fixtures import gateway as harness
from tests.fixtures.clock import FakeClock
from tests.fixtures.gateway import ADMIN_TOKEN, Harness
from tests.support.served import served

URL = "/v1/images/generations"
KEYS_URL = "/admin/v1/upstream-keys"
KEY_A = "sk-upstream-alpha-0123456789"
KEY_B = "sk-upstream-bravo-0123456789"
KEY_C = "sk-upstream-charlie-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SECRETS = {"configured-1": KEY_A, "configured-2": KEY_B}


class PerKeyFaults:
    """In front of the sandbox: creates sent with a key listed in `faults` carry the sandbox's own fault header."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.faults: dict[str, str] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith(URL):
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            fault = self.faults.get(auth.removeprefix("Bearer ").strip())
            if fault:
                scope = {**scope, "headers": [*scope["headers"], (b"x-sandbox-fault", fault.encode())]}
        await self.app(scope, receive, send)


class PoolHarness(Harness):
    faults: PerKeyFaults

    @property
    def upstream(self) -> Upstream:
        upstream: Upstream = self.app.state.upstream
        return upstream

    def calls(self, secret: str, kind: str = "create") -> int:
        counts: dict[str, int] = self.sandbox_stats()["by_key"].get(key_fingerprint(secret), {})
        return counts.get(kind, 0)

    async def keys(self) -> dict[str, dict[str, Any]]:
        r = await self.client.get(KEYS_URL, headers=ADMIN)
        assert r.status_code == 200, r.text
        return {k["name"]: k for k in r.json()["data"]}

    async def key_id(self, name: str) -> str:
        return str((await self.keys())[name]["id"])

    async def post(self, key: str, prompt: str = "a fox") -> httpx.Response:
        return await self.client.post(URL, headers=bearer(key), json={"prompt": prompt})

    async def submit(self, key: str) -> dict[str, Any]:
        r = await self.post(key)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def pinned_key(self, task_id: str) -> str | None:
        async with self.sessions() as session:
            return (await session.execute(select(Task.upstream_key_id).where(Task.id == task_id))).scalar_one()


@asynccontextmanager
async def pool_gateway(
    database_url: str, *, sandbox: SandboxConfig | None = None, **overrides: Any
) -> AsyncIterator[PoolHarness]:
    clock = FakeClock()
    sandbox_app = create_sandbox_app(
        sandbox or SandboxConfig(task_seconds=10, queue_seconds=1, seed=7), clock=clock.time
    )
    faults = PerKeyFaults(sandbox_app)
    async with served(faults) as sandbox_url:
        settings = harness.test_settings(
            database_url, **{"upstream_keys": f"{KEY_A},{KEY_B}", "upstream_base_url": sandbox_url, **overrides}
        )
        app = create_app(settings, clock=clock.now)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test")
        async with app.router.lifespan_context(app), client:
            gateway = PoolHarness(client=client, app=app, sandbox=sandbox_app, clock=clock)
            gateway.faults = faults
            yield gateway


@pytest.fixture
async def gw(database_url: str) -> AsyncIterator[PoolHarness]:
    async with pool_gateway(database_url) as gateway:
        yield gateway


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.02)


# --- key-specific refusals -------------------------------------------------------------------------------------


async def test_a_refused_key_is_disabled_and_the_submit_succeeds_on_another(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with pool_gateway(database_url, sandbox=SandboxConfig(task_seconds=10, accepted_keys=KEY_B)) as gw:
        tenant = await gw.new_tenant("acme", daily_images=10)
        ids = [(await gw.submit(tenant))["id"] for _ in range(4)]
        keys = await gw.keys()
        assert keys["configured-1"]["status"] == "disabled"
        assert keys["configured-1"]["status_reason"] == "refused by the upstream (401)"
        assert keys["configured-2"]["status"] == "active" and keys["configured-2"]["in_flight"] == 4
        assert {await gw.pinned_key(task_id) for task_id in ids} == {keys["configured-2"]["id"]}
        assert gw.sandbox_stats()["unauthorized"] == 1  # refused once, never tried again
        assert gw.calls(KEY_B) == 4
        alerts = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(alerts) == 1 and keys["configured-1"]["id"] in alerts[0] and "disabled" in alerts[0]
        usage = (await gw.client.get("/v1/usage", headers=bearer(tenant))).json()
        assert usage["day"]["used"] == 4  # the refusal cost the tenant nothing


async def test_uploads_move_to_another_key_too(database_url: str) -> None:
    async with pool_gateway(database_url, sandbox=SandboxConfig(accepted_keys=KEY_B)) as gw:
        tenant = await gw.new_tenant("acme")
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), "red").save(buffer, format="PNG")
        png = buffer.getvalue()
        r = await gw.client.post(
            "/v1/uploads/images", headers=bearer(tenant), files={"file": ("a.png", png, "image/png")}
        )
        assert r.status_code == 200 and r.json()["success"] is True, r.text
        assert gw.calls(KEY_B, "upload") == 1
        assert (await gw.keys())["configured-1"]["status"] == "disabled"


async def test_a_429_cools_exactly_that_key_for_its_retry_after(gw: PoolHarness) -> None:
    gw.sandbox_config(retry_after_seconds=7)
    tenant = await gw.new_tenant("acme")
    gw.faults.faults[KEY_A] = "429"
    first = await gw.submit(tenant)  # refused on A, moved to B before the tenant heard of it
    keys = await gw.keys()
    assert await gw.pinned_key(first["id"]) == keys["configured-2"]["id"]
    assert keys["configured-1"]["status"] == "cooling"
    assert keys["configured-1"]["cooling_until"] == int(gw.clock.t) + 7
    assert keys["configured-1"]["in_flight"] == 0 and keys["configured-2"]["in_flight"] == 1
    assert gw.sandbox_stats()["faults"] == {"429": 1}
    del gw.faults.faults[KEY_A]
    for _ in range(3):
        await gw.submit(tenant)
    gw.clock.advance(6.999)
    await gw.submit(tenant)
    assert (gw.calls(KEY_A), gw.calls(KEY_B)) == (1, 5)  # B took every submit while A cooled
    gw.clock.advance(0.001)  # exactly the Retry-After: A is back, with no write
    for _ in range(2):
        await gw.submit(tenant)
    assert gw.calls(KEY_A) == 2
    assert (await gw.keys())["configured-1"]["status"] == "active"


async def test_while_every_key_cools_tasks_wait_and_nothing_is_sent(gw: PoolHarness) -> None:
    tenant = await gw.new_tenant("acme", daily_images=5)
    gw.faults.faults.update({KEY_A: "429", KEY_B: "429"})
    # Both keys refuse (429): the task waits in the ledger (its reservation kept), the caller has its id.
    waiting = await gw.post(tenant)
    assert waiting.status_code == 200 and waiting.json()["status"] == "queued", waiting.text
    gw.faults.faults.clear()
    creates = gw.sandbox_stats()["create"]
    assert creates == 2  # each key tried once
    gw.clock.advance(1)
    r = await gw.post(tenant)  # every key still cools: it waits too, and nothing is sent
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert gw.sandbox_stats()["create"] == creates
    gw.clock.advance(1)
    await gw.submit(tenant)
    usage = (await gw.client.get("/v1/usage", headers=bearer(tenant))).json()
    assert usage["day"]["used"] == 3 and usage["in_flight"]["current"] == 3  # the waiting ones stay reserved
    assert (await gw.client.get("/readyz")).status_code == 200


async def test_no_key_that_can_recover_is_503_and_writes_nothing(gw: PoolHarness) -> None:
    tenant = await gw.new_tenant("acme", daily_images=5)
    for name in ("configured-1", "configured-2"):
        key_id = await gw.key_id(name)
        r = await gw.client.patch(f"{KEYS_URL}/{key_id}", headers=ADMIN, json={"enabled": False})
        assert r.status_code == 200, r.text
    r = await gw.post(tenant)
    assert_envelope(r, 503, "upstream_unavailable")
    assert "Retry-After" in r.headers
    usage = (await gw.client.get("/v1/usage", headers=bearer(tenant))).json()
    assert usage["day"]["used"] == 0 and usage["in_flight"]["current"] == 0


async def test_repeated_5xx_cool_a_key_briefly(gw: PoolHarness) -> None:
    tenant = await gw.new_tenant("acme")
    gw.faults.faults[KEY_A] = "500"
    answers = [await gw.post(tenant) for _ in range(6)]
    # A 5xx moves the task to the next key (B) before the tenant hears of it ...
    assert [r.status_code for r in answers] == [200] * 6
    assert gw.calls(KEY_B) == 6
    keys = await gw.keys()
    # ... and three in a row cool the key for 30 s, so B takes every submit meanwhile without A being tried.
    assert keys["configured-1"]["status"] == "cooling"
    assert keys["configured-1"]["cooling_until"] == int(gw.clock.t) + 30
    assert keys["configured-1"]["consecutive_errors"] == 3
    gw.faults.faults.clear()
    gw.clock.advance(30)
    for _ in range(2):
        await gw.submit(tenant)
    assert (await gw.keys())["configured-1"]["consecutive_errors"] == 0  # a success resets the count


# --- drain, retire, caps -----------------------------------------------------------------------------------------


async def test_a_draining_key_takes_no_new_task_while_its_tasks_are_polled_with_it(gw: PoolHarness) -> None:
    tenant = await gw.new_tenant("acme")
    first = await gw.submit(tenant)
    pinned = await gw.pinned_key(first["id"])
    keys = {k["id"]: k for k in (await gw.keys()).values()}
    old_secret = SECRETS[keys[pinned]["name"]]
    other_secret = KEY_B if old_secret == KEY_A else KEY_A
    r = await gw.client.post(f"{KEYS_URL}/{pinned}/drain", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "draining", r.text
    for _ in range(4):
        await gw.submit(tenant)
    assert (gw.calls(old_secret), gw.calls(other_secret)) == (1, 4)
    gw.clock.advance(2)
    r = await gw.client.get(f"{URL}/{first['id']}", headers=bearer(tenant))
    assert r.json()["status"] == "in_progress"
    assert gw.calls(old_secret, "status") == 1  # polled with the key that created it
    # Retired while its task is open: the task is still polled with it, until it ends.
    r = await gw.client.delete(f"{KEYS_URL}/{pinned}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "retired"
    gw.clock.advance(10)
    r = await gw.client.get(f"{URL}/{first['id']}", headers=bearer(tenant))
    assert r.json()["status"] == "completed"
    assert gw.calls(old_secret, "status") == 2
    assert (await gw.keys())[keys[pinned]["name"]]["in_flight"] == 0
    await gw.submit(tenant)
    assert gw.calls(old_secret) == 1


async def test_caps_are_respected(gw: PoolHarness) -> None:
    tenant = await gw.new_tenant("acme")
    for name in ("configured-1", "configured-2"):
        r = await gw.client.patch(f"{KEYS_URL}/{await gw.key_id(name)}", headers=ADMIN, json={"max_in_flight": 1})
        assert r.status_code == 200 and r.json()["max_in_flight"] == 1, r.text
    first, _ = await gw.submit(tenant), await gw.submit(tenant)
    r = await gw.post(tenant)  # every key full: the task waits for a slot (a task ending frees one by itself)
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    assert gw.sandbox_stats()["create"] == 2
    assert [k["in_flight"] for k in (await gw.keys()).values()] == [1, 1]
    gw.clock.advance(11)
    r = await gw.client.get(f"{URL}/{first['id']}", headers=bearer(tenant))
    assert r.json()["status"] == "completed"
    freed = await gw.pinned_key(first["id"])
    third = await gw.submit(tenant)
    assert await gw.pinned_key(third["id"]) == freed
    # No cap again: the count was kept all along, so a cap set later starts right.
    r = await gw.client.patch(f"{KEYS_URL}/{freed}", headers=ADMIN, json={"max_in_flight": None})
    assert r.json()["max_in_flight"] is None and r.json()["in_flight"] == 1


# --- probes, new keys --------------------------------------------------------------------------------------------


async def test_a_re_probe_re_enables_a_key_the_upstream_accepts_again(database_url: str) -> None:
    async with pool_gateway(
        database_url, sandbox=SandboxConfig(task_seconds=10, accepted_keys=f"{KEY_B},{KEY_C}")
    ) as gw:
        tenant = await gw.new_tenant("acme")
        await gw.submit(tenant)
        await gw.submit(tenant)
        r = await gw.client.post(KEYS_URL, headers=ADMIN, json={"name": "manual", "key": KEY_C})
        manual = r.json()["id"]
        r = await gw.client.patch(f"{KEYS_URL}/{manual}", headers=ADMIN, json={"enabled": False})
        assert r.json()["status"] == "disabled" and r.json()["status_reason"] == "disabled by an admin"
        keys = await gw.keys()
        assert keys["configured-1"]["status"] == "disabled"
        prober = gw.upstream.prober
        assert await prober.probe_due() == 0  # not due yet
        gw.clock.advance(61)
        assert await prober.probe_due() == 0  # due, probed, still refused
        gw.sandbox_config(accepted_keys=f"{KEY_A},{KEY_B},{KEY_C}")
        assert await prober.probe_due() == 0  # probed a moment ago: the next probe is one interval later
        gw.clock.advance(61)
        await prober.probe_due()

        async def enabled() -> bool:
            return (await gw.keys())["configured-1"]["status"] == "active"

        await until(enabled)  # (the background loop may have got there first)
        assert (await gw.keys())["manual"]["status"] == "disabled"  # an admin's disable is never probed away
        before = gw.calls(KEY_A)
        for _ in range(2):
            await gw.submit(tenant)
        assert gw.calls(KEY_A) == before + 1


async def test_a_new_key_takes_tasks_at_once(gw: PoolHarness) -> None:
    tenant = await gw.new_tenant("acme")
    r = await gw.client.post(KEYS_URL, headers=ADMIN, json={"name": "heavy", "key": KEY_C, "weight": 1000})
    assert r.status_code == 201, r.text
    for _ in range(3):
        await gw.submit(tenant)
    assert gw.calls(KEY_C) == 3


async def test_enabled_true_ends_a_cooldown(gw: PoolHarness) -> None:
    gw.sandbox_config(retry_after_seconds=300)
    tenant = await gw.new_tenant("acme")
    gw.faults.faults.update({KEY_A: "429", KEY_B: "429"})
    assert (await gw.post(tenant)).json()["status"] == "queued"  # both cooling for 300 s: it waits
    gw.faults.faults.clear()
    key_id = await gw.key_id("configured-2")
    r = await gw.client.patch(f"{KEYS_URL}/{key_id}", headers=ADMIN, json={"enabled": True})
    assert r.json()["status"] == "active" and r.json()["cooling_until"] is None
    await gw.submit(tenant)
    assert gw.calls(KEY_B) == 2


# --- the ops API ---------------------------------------------------------------------------------------------


async def test_admin_api_shapes(gw: PoolHarness) -> None:
    r = await gw.client.post(KEYS_URL, headers=ADMIN, json={"name": "  org-key-3 ", "key": KEY_C, "weight": 5})
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {
        "object",
        "id",
        "name",
        "fingerprint",
        "status",
        "status_reason",
        "weight",
        "max_in_flight",
        "in_flight",
        "cooling_until",
        "consecutive_errors",
        "created_at",
        "updated_at",
    }
    assert created["object"] == "upstream_key" and created["id"].startswith("upk_")
    assert (created["name"], created["status"], created["weight"]) == ("org-key-3", "active", 5)
    assert created["max_in_flight"] is None and created["in_flight"] == 0 and len(created["fingerprint"]) == 8
    assert_envelope(
        await gw.client.post(KEYS_URL, headers=ADMIN, json={"name": "again", "key": KEY_C}), 409, "conflict"
    )
    assert_envelope(await gw.client.post(KEYS_URL, headers=ADMIN, json={"name": "dup", "key": KEY_A}), 409, "conflict")

    page = (await gw.client.get(KEYS_URL, headers=ADMIN, params={"limit": 2})).json()
    assert page["object"] == "list" and len(page["data"]) == 2 and page["next_cursor"] == page["data"][1]["id"]
    rest = (await gw.client.get(KEYS_URL, headers=ADMIN, params={"limit": 2, "cursor": page["next_cursor"]})).json()
    assert [k["id"] for k in rest["data"]] == [created["id"]] and rest["next_cursor"] is None

    url = f"{KEYS_URL}/{created['id']}"
    r = await gw.client.patch(url, headers=ADMIN, json={"weight": 7, "max_in_flight": 3})
    assert (r.json()["weight"], r.json()["max_in_flight"]) == (7, 3)
    r = await gw.client.patch(url, headers=ADMIN, json={})
    assert r.status_code == 200 and r.json()["weight"] == 7  # nothing given, nothing changed
    r = await gw.client.patch(url, headers=ADMIN, json={"enabled": False})
    assert (r.json()["status"], r.json()["status_reason"]) == ("disabled", "disabled by an admin")
    r = await gw.client.patch(url, headers=ADMIN, json={"enabled": True})
    assert (r.json()["status"], r.json()["status_reason"]) == ("active", None)
    assert (await gw.client.post(f"{url}/drain", headers=ADMIN)).json()["status"] == "draining"
    assert (await gw.client.delete(url, headers=ADMIN)).json()["status"] == "retired"
    assert (await gw.client.delete(url, headers=ADMIN)).json()["status"] == "retired"  # idempotent
    assert_envelope(await gw.client.patch(url, headers=ADMIN, json={"weight": 2}), 404, "not_found")
    assert_envelope(await gw.client.post(f"{url}/drain", headers=ADMIN), 404, "not_found")
    for unknown in ("upk_nothing", "%00", "x" * 80):
        assert_envelope(await gw.client.delete(f"{KEYS_URL}/{unknown}", headers=ADMIN), 404, "not_found")

    for bad in (
        {"name": "x", "key": KEY_C, "weight": 0},
        {"name": "x", "key": KEY_C, "weight": 1001},
        {"name": "x", "key": KEY_C, "max_in_flight": 0},
        {"name": "x", "key": "has a space"},
        {"name": " ", "key": "sk-new-key-1"},
        {"name": "x\u0000", "key": "sk-new-key-1"},
        {"name": "x", "key": "sk-new-key-1", "extra": 1},
        {"name": "x"},
    ):
        assert_envelope(await gw.client.post(KEYS_URL, headers=ADMIN, json=bad), 400, "invalid_request")
    live = await gw.key_id("configured-1")
    for bad in ({"weight": None}, {"enabled": None}, {"weight": "2"}, {"max_in_flight": -1}, {"status": "active"}):
        r = await gw.client.patch(f"{KEYS_URL}/{live}", headers=ADMIN, json=bad)
        assert_envelope(r, 400, "invalid_request")
    for params in ({"limit": 0}, {"limit": 201}, {"cursor": "a b"}):
        assert_envelope(await gw.client.get(KEYS_URL, headers=ADMIN, params=params), 400, "invalid_request")

    tenant = await gw.new_tenant("acme")
    assert_envelope(await gw.client.get(KEYS_URL), 401, "unauthorized")
    assert_envelope(await gw.client.get(KEYS_URL, headers=bearer(tenant)), 401, "unauthorized")

    async with gw.sessions() as session:
        audit = (await session.execute(select(AuditEvent).order_by(AuditEvent.id))).scalars().all()
    actions = [(e.action, e.outcome) for e in audit if e.target_id == created["id"]]
    assert actions == [
        ("upstream_key.create", "ok"),
        ("upstream_key.update", "ok"),
        ("upstream_key.update", "ok"),
        ("upstream_key.update", "ok"),
        ("upstream_key.update", "ok"),
        ("upstream_key.drain", "ok"),
        ("upstream_key.retire", "ok"),
        ("upstream_key.retire", "ok"),
        ("upstream_key.update", "refused"),
        ("upstream_key.drain", "refused"),
    ]
    assert {e.actor for e in audit if e.target_type == "upstream_key"} == {"admin-token"}
    assert [e.outcome for e in audit if e.action == "upstream_key.create"].count("refused") == 2
    assert all(KEY_C not in repr(e.detail) and KEY_A not in repr(e.detail) for e in audit)


async def test_readiness_follows_the_usable_keys(gw: PoolHarness) -> None:
    for name in ("configured-1", "configured-2"):
        await gw.client.post(f"{KEYS_URL}/{await gw.key_id(name)}/drain", headers=ADMIN)
    r = await gw.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["upstream_keys"] != "ok"
    await gw.client.patch(f"{KEYS_URL}/{await gw.key_id('configured-2')}", headers=ADMIN, json={"enabled": True})
    assert (await gw.client.get("/readyz")).status_code == 200


async def test_no_secret_in_any_answer_or_log_line(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[httpx.Response] = []
    async with pool_gateway(
        database_url, sandbox=SandboxConfig(task_seconds=10, accepted_keys=f"{KEY_B},{KEY_C}")
    ) as gw:
        tenant = await gw.new_tenant("acme")

        async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
            response = await gw.client.request(method, url, **kwargs)
            answers.append(response)
            return response

        task = (await call("POST", URL, headers=bearer(tenant), json={"prompt": "a fox"})).json()  # A refused
        gw.faults.faults[KEY_B] = "429"
        await call("POST", URL, headers=bearer(tenant), json={"prompt": "a fox"})  # B cooled: 503
        gw.faults.faults.clear()
        created = (await call("POST", KEYS_URL, headers=ADMIN, json={"name": "c", "key": KEY_C})).json()
        await call("POST", KEYS_URL, headers=ADMIN, json={"name": "c", "key": KEY_C})  # 409
        await call("POST", KEYS_URL, headers=ADMIN, json={"name": "c", "key": KEY_C + " x"})  # 400
        await call("POST", URL, headers=bearer(tenant), json={"prompt": "a fox"})
        await call("GET", KEYS_URL, headers=ADMIN)
        await call("PATCH", f"{KEYS_URL}/{created['id']}", headers=ADMIN, json={"weight": 3})
        await call("POST", f"{KEYS_URL}/{created['id']}/drain", headers=ADMIN)
        await call("DELETE", f"{KEYS_URL}/{created['id']}", headers=ADMIN)
        gw.clock.advance(30)
        await call("GET", f"{URL}/{task['id']}", headers=bearer(tenant))
        await call("GET", KEYS_URL, headers={"Authorization": f"Bearer {tenant}"})
        await call("GET", "/readyz")
        gw.clock.advance(120)
        await gw.upstream.prober.probe_due()
    assert {r.status_code for r in answers} >= {200, 201, 400, 401, 409}
    secrets = (KEY_A, KEY_B, KEY_C, ADMIN_TOKEN, tenant)
    for response in answers:
        shown = response.text + repr(dict(response.headers))
        assert not [s for s in secrets if s in shown], response.text
    lines = [record.getMessage() + (record.exc_text or "") for record in caplog.records]
    assert len(lines) > 10
    assert not [line for line in lines if any(s in line for s in secrets)]
