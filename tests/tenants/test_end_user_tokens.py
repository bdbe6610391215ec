"""End-user tokens through the ASGI app (issue 21): minting, using one as a key, expiry, scopes, origins, isolation
between end users, per-end-user limits inside the tenant's, revocation, per-tenant CORS, the try-it page. One fake
clock; the real processes (two replicas, racing submits) are tests/e2e/test_end_user_tokens_e2e.py.
"""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image

from app.core.security import KeyMaterial
from app.tenants.tokens import TokenClaims
from tests.fixtures.gateway import ADMIN_TOKEN, SECRET_KEY, Harness, key_known, running_gateway, until_fresh
from tests.tasks.test_hot_path_caches import statements

URL = "/v1/images/generations"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
APP = "https://app.example"
ACTOR = "test"


def bearer(credential: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}", **headers}


async def minting_tenant(gw: Harness, name: str = "acme", **limits: int | None) -> tuple[str, str, str]:
    """A tenant, its first key (submit, read) and a key that may mint: (tenant id, key, minting key)."""
    tenant, key = await gw.tenants.create(name, limits=limits)
    minter = await gw.tenants.create_key(tenant.id, name="backend", scopes=["submit", "read", "mint"], actor=ACTOR)
    return tenant.id, key, minter.key


async def mint(gw: Harness, minter: str, end_user: str = "alice", status: int = 200, **body: Any) -> dict[str, Any]:
    r = await gw.client.post("/v1/tokens", headers=bearer(minter), json={"end_user": end_user, **body})
    assert r.status_code == status, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def submit(gw: Harness, credential: str, n: int = 1, **headers: str) -> httpx.Response:
    return await gw.client.post(URL, headers=bearer(credential, **headers), json={"prompt": "a fox", "n": n})


async def status(gw: Harness, credential: str, task_id: str, **headers: str) -> httpx.Response:
    return await gw.client.get(f"{URL}/{task_id}", headers=bearer(credential, **headers))


def error(r: httpx.Response, status_code: int, code: str) -> str:
    assert r.status_code == status_code, r.text
    body = r.json()["error"]
    assert body["code"] == code, r.text
    message: str = body["message"]
    return message


# --- minting ------------------------------------------------------------------------------------------------------
async def test_minting_needs_the_mint_scope_which_no_key_has_by_default(gw: Harness) -> None:
    _, key, minter = await minting_tenant(gw)
    error(await gw.client.post("/v1/tokens", headers=bearer(key), json={"end_user": "alice"}), 403, "forbidden")
    made = await mint(gw, minter, "alice")
    assert made["object"] == "token" and made["token"].startswith("gwt_")
    assert made["end_user"] == "alice" and made["scopes"] == ["submit", "read"]
    assert made["expires_at"] == int(gw.clock.t) + 900  # the default lifetime
    claims = TokenClaims.decode(KeyMaterial(SECRET_KEY).token_body(made["token"]) or b"")
    assert claims is not None and claims.end_user.id == "alice"
    assert (await mint(gw, minter, "bob", ttl_seconds=3600))["expires_at"] == int(gw.clock.t) + 3600
    for body in (
        {"end_user": "alice", "ttl_seconds": 3601},
        {"end_user": "x" * 129},
        {"end_user": "  "},
        {"end_user": "a\x1bb"},
        {"end_user": "alice", "scopes": ["mint"]},
        {"end_user": "alice", "origins": ["https://app.example/path"]},
        {"end_user": "alice", "images_per_day": -1},
    ):
        r = await gw.client.post("/v1/tokens", headers=bearer(minter), json=body)
        assert r.status_code == 400, (body, r.text)


async def test_a_token_never_outlives_its_key_nor_asks_for_a_scope_the_key_lacks(gw: Harness) -> None:
    tenant_id, _, _ = await minting_tenant(gw)
    short = await gw.tenants.create_key(tenant_id, scopes=["read", "mint"], expires_in_s=60, actor=ACTOR)
    made = await mint(gw, short.key, ttl_seconds=3600)
    assert made["expires_at"] == int(gw.clock.t) + 60 and made["scopes"] == ["read"]
    refused = await gw.client.post(
        "/v1/tokens", headers=bearer(short.key), json={"end_user": "alice", "scopes": ["submit"]}
    )
    error(refused, 403, "scope_not_held")


async def test_a_token_cannot_mint_nor_reach_the_ops_api(gw: Harness) -> None:
    _, _, minter = await minting_tenant(gw)
    token = (await mint(gw, minter))["token"]
    message = error(
        await gw.client.post("/v1/tokens", headers=bearer(token), json={"end_user": "eve"}), 403, "forbidden"
    )
    assert "cannot mint" in message
    for path in ("/admin/v1/tenants", "/admin/v1/tasks", "/admin/v1/audit"):
        assert (await gw.client.get(path, headers=bearer(token))).status_code == 401, path
    r = await gw.client.post("/admin/v1/tenants", headers=bearer(token), json={"name": "mine"})
    assert r.status_code == 401


# --- using a token ------------------------------------------------------------------------------------------------
async def test_a_token_submits_reads_streams_uploads_and_sees_its_own_usage(gw: Harness) -> None:
    _, key, minter = await minting_tenant(gw)
    token = (await mint(gw, minter, "alice", images_per_day=10))["token"]
    r = await submit(gw, token, n=2)
    assert r.status_code == 200, r.text
    task_id = r.json()["id"]
    gw.clock.advance(11)
    done = await status(gw, token, task_id)
    assert done.status_code == 200 and done.json()["status"] == "completed"
    assert len(done.json()["result"]["data"]) == 2
    assert (await status(gw, key, task_id)).json() == done.json()  # the tenant's key reads every end user's task
    stream = await gw.client.get(f"{URL}/{task_id}/events", headers=bearer(token))
    assert stream.status_code == 200 and '"status":"completed"' in stream.text
    async with gw.sessions() as session:
        from app.models import Task

        stored = await session.get(Task, task_id)
    assert stored is not None and stored.end_user == "alice"

    png = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(png, format="PNG")
    upload = await gw.client.post(
        "/v1/uploads/images", headers=bearer(token), files={"file": ("a.png", png.getvalue(), "image/png")}
    )
    assert upload.status_code == 200 and upload.json()["success"] is True, upload.text

    mine = (await gw.client.get("/v1/usage", headers=bearer(token))).json()
    assert mine["end_user"] == "alice" and mine["month"] is None and mine["in_flight"] is None
    assert (mine["day"]["used"], mine["day"]["limit"], mine["day"]["remaining"]) == (2, 10, 8)
    tenants = (await gw.client.get("/v1/usage", headers=bearer(key))).json()
    assert tenants["end_user"] is None and tenants["day"]["used"] == 2 and tenants["month"]["used"] == 2


async def test_a_token_reads_only_its_own_end_users_tasks(gw: Harness) -> None:
    _, key, minter = await minting_tenant(gw)
    alice, bob = (await mint(gw, minter, "alice"))["token"], (await mint(gw, minter, "bob"))["token"]
    of_alice = (await submit(gw, alice)).json()["id"]
    of_key = (await submit(gw, key)).json()["id"]
    gw.clock.advance(11)
    for reader, task_id in ((alice, of_alice), (key, of_alice), (key, of_key)):
        assert (await status(gw, reader, task_id)).status_code == 200
    # Warm in memory now (answers kept, keys known): the pre-routing path refuses alike.
    for warm in (False, True):
        if warm:
            await key_known(gw, bob)
        for task_id in (of_alice, of_key):
            error(await status(gw, bob, task_id), 404, "task_not_found")
            r = await gw.client.get(f"{URL}/{task_id}/events", headers=bearer(bob))
            error(r, 404, "task_not_found")
        error(await status(gw, alice, of_key), 404, "task_not_found")


async def test_an_idempotency_key_never_replays_another_end_users_task(gw: Harness) -> None:
    _, _, minter = await minting_tenant(gw)
    alice, bob = (await mint(gw, minter, "alice"))["token"], (await mint(gw, minter, "bob"))["token"]
    first = await submit(gw, alice, **{"Idempotency-Key": "same"})
    again = await submit(gw, alice, **{"Idempotency-Key": "same"})
    assert first.status_code == again.status_code == 200 and first.json()["id"] == again.json()["id"]
    error(await submit(gw, bob, **{"Idempotency-Key": "same"}), 409, "idempotency_key_reused")


async def test_expiry_and_scopes(gw: Harness) -> None:
    _, _, minter = await minting_tenant(gw)
    reader = (await mint(gw, minter, "alice", scopes=["read"], ttl_seconds=60))["token"]
    assert "'submit' scope" in error(await submit(gw, reader), 403, "forbidden")
    assert (await gw.client.get("/v1/usage", headers=bearer(reader))).status_code == 200
    gw.clock.advance(60)
    assert "expired" in error(await gw.client.get("/v1/usage", headers=bearer(reader)), 401, "unauthorized")
    forged = reader[:-4] + ("AAAA" if not reader.endswith("AAAA") else "BBBB")
    error(await gw.client.get("/v1/usage", headers=bearer(forged)), 401, "unauthorized")
    other_secret = KeyMaterial("another-secret-for-tests-0123456789").sign_token(b'{"t":"x"}')
    error(await gw.client.get("/v1/usage", headers=bearer(other_secret)), 401, "unauthorized")


async def test_a_warm_token_takes_the_keys_path_before_routing_without_a_database_read(
    gw: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, minter = await minting_tenant(gw)
    token = (await mint(gw, minter, "alice"))["token"]
    task_id = (await submit(gw, token)).json()["id"]
    gw.clock.advance(11)
    first = await status(gw, token, task_id)  # warms the minting key and the answer
    assert first.json()["status"] == "completed"

    async def not_routed(*_: object, **__: object) -> bytes:
        raise AssertionError("the status route ran: the call did not take the pre-routing path")

    await key_known(gw, token)
    monkeypatch.setattr(gw.tasks, "status_answer", not_routed)
    monkeypatch.setattr(gw.tenants, "authenticate_key", not_routed)  # the routed identity step (may read the DB)
    with statements(gw) as sent:
        answers = [await status(gw, token, task_id) for _ in range(5)]
    assert sent == [] and all(r.content == first.content for r in answers)
    monkeypatch.undo()

    # A submit too: the submit fast path, as a known key's (its one admission statement, no identity read).
    await key_known(gw, token)
    seen = []
    real_submit = gw.tasks.submit

    async def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs.get("end_user"))
        return await real_submit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gw.tasks, "submit", spy)
    monkeypatch.setattr(gw.tenants, "authenticate_key", not_routed)
    assert (await submit(gw, token)).status_code == 200
    assert [getattr(e, "id", None) for e in seen] == ["alice"]


# --- origins ------------------------------------------------------------------------------------------------------
async def test_a_token_minted_for_origins_is_refused_from_any_other(gw: Harness) -> None:
    _, _, minter = await minting_tenant(gw)
    token = (await mint(gw, minter, "alice", origins=[APP + "/"]))["token"]
    task_id = (await submit(gw, token, Origin=APP)).json()["id"]
    gw.clock.advance(11)
    assert (await status(gw, token, task_id)).status_code == 200  # no Origin: not a browser page
    for warm in (False, True):
        if warm:
            await key_known(gw, token)
        else:
            gw.tenants.forget_known_keys()
        assert (await status(gw, token, task_id, Origin=APP)).status_code == 200
        message = error(await status(gw, token, task_id, Origin="https://evil.example"), 403, "origin_not_allowed")
        assert "evil.example" in message
        error(await submit(gw, token, Origin="https://evil.example"), 403, "origin_not_allowed")
    assert gw.sandbox_stats()["create"] == 1


async def test_cors_is_per_tenant_with_the_setting_as_default(database_url: str) -> None:
    async with running_gateway(database_url, cors_origins="https://default.example") as gw:
        acme_id, acme_key, _ = await minting_tenant(gw, "acme")
        _, other_key, _ = await minting_tenant(gw, "other")
        r = await gw.client.patch(f"/admin/v1/tenants/{acme_id}", headers=ADMIN, json={"cors_origins": [APP + "/"]})
        assert r.status_code == 200 and r.json()["cors_origins"] == [APP], r.text
        await until_fresh(gw)

        def allowed(response: httpx.Response) -> str | None:
            return response.headers.get("access-control-allow-origin")

        usage = "/v1/usage"
        assert allowed(await gw.client.get(usage, headers=bearer(acme_key, Origin=APP))) == APP
        assert allowed(await gw.client.get(usage, headers=bearer(acme_key, Origin="https://default.example"))) is None
        assert allowed(await gw.client.get(usage, headers=bearer(other_key, Origin=APP))) is None
        default = await gw.client.get(usage, headers=bearer(other_key, Origin="https://default.example"))
        assert allowed(default) == "https://default.example"

        # A preflight names no tenant: any origin some tenant (or the default) allows.
        asked = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        for origin in (APP, "https://default.example"):
            preflight = await gw.client.options(URL, headers={"Origin": origin, **asked})
            assert preflight.status_code == 200 and allowed(preflight) == origin
        refused = await gw.client.options(URL, headers={"Origin": "https://evil.example", **asked})
        assert refused.status_code == 400 and allowed(refused) is None

        # Back to the default: the tenant's own origins go, from the preflights too.
        r = await gw.client.patch(f"/admin/v1/tenants/{acme_id}", headers=ADMIN, json={"cors_origins": None})
        assert r.status_code == 200 and r.json()["cors_origins"] is None
        assert (await gw.client.options(URL, headers={"Origin": APP, **asked})).status_code == 400
        assert allowed(await gw.client.get(usage, headers=bearer(acme_key, Origin=APP))) is None
        bad = await gw.client.patch(f"/admin/v1/tenants/{acme_id}", headers=ADMIN, json={"cors_origins": ["nope"]})
        assert bad.status_code == 400, bad.text


# --- limits per end user ------------------------------------------------------------------------------------------
async def test_images_per_day_of_an_end_user_count_inside_the_tenants(gw: Harness) -> None:
    _, key, minter = await minting_tenant(gw, daily_images=5)
    alice = (await mint(gw, minter, "alice", images_per_day=3))["token"]
    bob = (await mint(gw, minter, "bob", images_per_day=3))["token"]
    assert (await submit(gw, alice, n=2)).status_code == 200
    message = error(await submit(gw, alice, n=2), 402, "insufficient_quota")
    assert "'alice'" in message and "3 per UTC day" in message
    assert (await submit(gw, alice, n=1)).status_code == 200  # exactly up to its limit
    # Bob has his own day, inside the tenant's: 3 of the tenant's 5 are taken.
    message = error(await submit(gw, bob, n=3), 402, "insufficient_quota")
    assert "limit is 5 per UTC day" in message  # the tenant's refusal names the tenant's limit
    assert (await submit(gw, bob, n=2)).status_code == 200
    error(await submit(gw, key, n=1), 402, "insufficient_quota")
    days = {
        who: (await gw.client.get("/v1/usage", headers=bearer(t))).json()["day"]
        for who, t in [("a", alice), ("b", bob)]
    }
    assert (days["a"]["used"], days["b"]["used"]) == (3, 2)
    assert gw.sandbox_stats()["create"] == 3


async def test_a_failed_task_refunds_its_end_users_day_and_the_books_balance(gw: Harness) -> None:
    _, _, minter = await minting_tenant(gw)
    alice = (await mint(gw, minter, "alice", images_per_day=2))["token"]
    gw.sandbox_config(fail_rate=1.0)
    task_id = (await submit(gw, alice, n=2)).json()["id"]
    gw.clock.advance(11)
    assert (await status(gw, alice, task_id)).json()["status"] == "failed"
    assert (await gw.client.get("/v1/usage", headers=bearer(alice))).json()["day"]["used"] == 0
    gw.sandbox_config(fail_rate=0.0)
    assert (await submit(gw, alice, n=2)).status_code == 200
    drift = (await gw.client.get("/admin/v1/quota/drift", headers=ADMIN)).json()
    assert drift == {"ok": True, "drift": []}


async def test_submits_per_minute_of_an_end_user_with_the_same_headers(gw: Harness) -> None:
    _, _, minter = await minting_tenant(gw, submit_rpm=100)
    alice = (await mint(gw, minter, "alice", submits_per_minute=2))["token"]
    bob = (await mint(gw, minter, "bob", submits_per_minute=2))["token"]
    first = await submit(gw, alice)
    assert first.status_code == 200
    assert (first.headers["x-ratelimit-limit"], first.headers["x-ratelimit-remaining"]) == ("2", "1")
    assert (await submit(gw, alice)).status_code == 200
    refused = await submit(gw, alice)
    assert "end user 'alice'" in error(refused, 429, "rate_limit_exceeded")
    assert refused.headers["x-ratelimit-limit"] == "2" and int(refused.headers["retry-after"]) >= 1
    assert (await submit(gw, bob)).status_code == 200  # another end user's minute
    gw.clock.advance(60)
    assert (await submit(gw, alice)).status_code == 200


async def test_the_tenants_minute_refuses_a_token_too_and_says_so(gw: Harness) -> None:
    _, _, minter = await minting_tenant(gw, submit_rpm=1)
    alice = (await mint(gw, minter, "alice", submits_per_minute=5))["token"]
    assert (await submit(gw, alice)).status_code == 200
    message = error(await submit(gw, alice), 429, "rate_limit_exceeded")
    assert "Rate limit of 1 submit requests per minute exceeded" in message


# --- revocation ---------------------------------------------------------------------------------------------------
async def _token_state(gw: Harness, token: str, *, warm: bool) -> int:
    await until_fresh(gw)
    if warm:
        gw.tenants.known_key(f"Bearer {token}")  # from memory, if it can
    else:
        gw.tenants.forget_known_keys()
    return (await gw.client.get("/v1/usage", headers=bearer(token))).status_code


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
async def test_revoking_the_key_disabling_the_tenant_or_revoking_tokens_refuses_them(gw: Harness, warm: bool) -> None:
    tenant_id, _, minter_key = await minting_tenant(gw)
    minter = await gw.tenants.create_key(tenant_id, name="m2", scopes=["submit", "read", "mint"], actor=ACTOR)
    token = (await mint(gw, minter.key))["token"]
    assert await _token_state(gw, token, warm=warm) == 200
    await gw.tenants.revoke_key(minter.id, actor=ACTOR)
    assert await _token_state(gw, token, warm=warm) == 401

    token = (await mint(gw, minter_key))["token"]
    keys = (await gw.client.get(f"/admin/v1/tenants/{tenant_id}/keys", headers=ADMIN)).json()["data"]
    minter_id = next(k["id"] for k in keys if k["name"] == "backend")
    rotated = await gw.client.post(f"/admin/v1/keys/{minter_id}/rotate", headers=ADMIN, json={"grace_seconds": 10})
    assert rotated.status_code in (200, 201)
    assert await _token_state(gw, token, warm=warm) == 200  # within the old key's grace
    gw.clock.advance(10)
    assert await _token_state(gw, token, warm=warm) == 401
    new_minter = rotated.json()["key"]

    token = (await mint(gw, new_minter))["token"]
    gw.clock.advance(0.002)
    r = await gw.client.post(f"/admin/v1/tenants/{tenant_id}/tokens/revoke", headers=ADMIN)
    assert r.status_code == 200 and r.json()["object"] == "token_revocation", r.text
    assert await _token_state(gw, token, warm=warm) == 401
    gw.clock.advance(0.002)
    fresh = (await mint(gw, new_minter))["token"]  # minted after: works
    assert await _token_state(gw, fresh, warm=warm) == 200

    await gw.tenants.disable(tenant_id, actor=ACTOR)
    assert await _token_state(gw, fresh, warm=warm) == 401
    await gw.tenants.enable(tenant_id, actor=ACTOR)
    assert await _token_state(gw, fresh, warm=warm) == 200


# --- the try-it page ----------------------------------------------------------------------------------------------
async def test_the_page_is_off_unless_ops_turn_it_on_for_a_tenant(gw: Harness, database_url: str) -> None:
    error(await gw.client.get("/"), 404, "page_off")
    error(await gw.client.post("/page/token"), 404, "page_off")
    async with running_gateway(database_url, page_tenant="shop") as page:
        tenant, _ = await page.tenants.create("shop")
        error(await page.client.post("/page/token"), 409, "no_minting_key")
        await page.tenants.create_key(tenant.id, scopes=["submit", "read", "mint"], actor=ACTOR)
        html = await page.client.get("/")
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assert "default-src 'self'" in html.headers["content-security-policy"]
        for asset in ("page/page.js", "page/page.css"):
            assert asset in html.text
            assert (await page.client.get(f"/{asset}")).status_code == 200
        made = (await page.client.post("/page/token", headers={"Origin": "http://gateway.test"})).json()
        assert made["end_user"].startswith("page-") and made["scopes"] == ["submit", "read"]
        task = await submit(page, made["token"], Origin="http://gateway.test")
        assert task.status_code == 200, task.text
        error(await submit(page, made["token"], Origin="https://elsewhere.example"), 403, "origin_not_allowed")
        usage = (await page.client.get("/v1/usage", headers=bearer(made["token"]))).json()
        assert usage["day"]["limit"] == 20  # the page's limits per end user (GATEWAY_PAGE_IMAGES_PER_DAY)
