"""One access decision (app/access/policy.py): every refusal is the same through a cold key (looked up in the
database, routed) and a warm one (known in memory, where the pre-routing fast paths answer), for status and
submit; and a rule added in one place applies to both paths.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from app.access import policy
from app.access.policy import Need
from app.tenants.errors import Forbidden
from app.tenants.service import AuthenticatedKey, TenantService
from tests.fixtures.gateway import Harness, completed_task, key_known, until_fresh

URL = "/v1/images/generations"
ACTOR = "test"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call(gw: Harness, kind: str, key: str, task_id: str) -> httpx.Response:
    if kind == "status":
        return await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))
    return await gw.client.post(URL, headers=bearer(key), json={"prompt": "a fox"})


def forget_keys(gw: Harness) -> None:
    """No key known in memory: the next call of any key is looked up (cold)."""
    gw.tenants.forget_known_keys()


class Case:
    """A tenant with a completed task (made with its own key B) and a key A that the refusal concerns."""

    def __init__(self, gw: Harness, kind: str, limits: dict[str, int | None], scopes: list[str] | None) -> None:
        self.gw, self.kind, self.limits, self.scopes = gw, kind, limits, scopes

    async def start(self) -> None:
        gw = self.gw
        self.tenant, other = await gw.tenants.create(f"t-{secrets.token_hex(4)}", limits=self.limits)
        self.task_id = await completed_task(gw, other)
        made = await gw.tenants.create_key(self.tenant.id, scopes=self.scopes, expires_in_s=3600, actor=ACTOR)
        self.key, self.key_id = made.key, made.id

    async def warm(self) -> None:
        await key_known(self.gw, self.key)


Condition = Callable[[Case], Awaitable[None]]


async def nothing(case: Case) -> None:
    pass


async def revoke(case: Case) -> None:
    await case.gw.tenants.revoke_key(case.key_id, actor=ACTOR)


async def expire(case: Case) -> None:
    case.gw.clock.advance(3601)


async def rotate_past_grace(case: Case) -> None:
    await case.gw.tenants.rotate_key(case.key_id, grace_seconds=10, actor=ACTOR)
    case.gw.clock.advance(11)


async def disable_tenant(case: Case) -> None:
    await case.gw.tenants.disable(case.tenant.id, actor=ACTOR)


async def use_the_minute(case: Case) -> None:
    """Call until the tenant's window for this kind is full (the task's own submit and status counted too)."""
    for _ in range(3):
        if (await call(case.gw, case.kind, case.key, case.task_id)).status_code == 429:
            return
    raise AssertionError("the per-minute limit never refused")


async def unknown_key(case: Case) -> None:
    case.key = "sk-gw-" + secrets.token_urlsafe(32)


# (refusal, limits, scopes by call kind, condition, expected status by call kind)
CASES: list[tuple[str, dict[str, int | None], dict[str, list[str]] | None, Condition, dict[str, int]]] = [
    ("unknown key", {}, None, unknown_key, {"status": 401, "submit": 401}),
    ("revoked", {}, None, revoke, {"status": 401, "submit": 401}),
    ("expired", {}, None, expire, {"status": 401, "submit": 401}),
    ("rotated past grace", {}, None, rotate_past_grace, {"status": 401, "submit": 401}),
    ("disabled tenant", {}, None, disable_tenant, {"status": 401, "submit": 401}),
    ("missing scope", {}, {"status": ["submit"], "submit": ["read"]}, nothing, {"status": 403, "submit": 403}),
    ("per-minute limit", {"submit_rpm": 2, "query_rpm": 1}, None, use_the_minute, {"status": 429, "submit": 429}),
    ("quota", {"daily_images": 1}, None, nothing, {"status": 200, "submit": 402}),
]


def shape(response: httpx.Response) -> tuple[int, Any]:
    """Status and body, with what differs between two tasks or two tenants blanked."""
    body = response.json()
    if isinstance(body, dict) and "id" in body:  # a task: whose it is aside
        body = {name: value for name, value in body.items() if name in ("object", "model", "status", "progress")}
    return response.status_code, body


async def answer(gw: Harness, kind: str, case_spec: tuple[Any, ...], *, warm: bool) -> httpx.Response:
    _, limits, scopes, condition, _ = case_spec
    case = Case(gw, kind, limits, scopes[kind] if scopes else None)
    await case.start()
    if warm:
        await case.warm()
    await condition(case)
    await until_fresh(gw)  # every change has reached memory: a warm key that is still usable is still known
    if not warm:
        forget_keys(gw)
    return await call(gw, kind, case.key, case.task_id)


@pytest.mark.parametrize("kind", ["status", "submit"])
@pytest.mark.parametrize("case_spec", CASES, ids=[c[0] for c in CASES])
async def test_every_refusal_is_the_same_through_a_cold_and_a_warm_key(
    gw: Harness, kind: str, case_spec: tuple[Any, ...]
) -> None:
    cold = await answer(gw, kind, case_spec, warm=False)
    warm = await answer(gw, kind, case_spec, warm=True)
    assert cold.status_code == case_spec[4][kind], cold.text
    assert shape(warm) == shape(cold), (warm.text, cold.text)


class Lookups:
    """Counts `authenticate_key`: the routed path's identity step (the pre-routing paths use `known_key` alone)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = TenantService.authenticate_key

        async def spy(service: TenantService, authorization: str | None, **kwargs: Any) -> AuthenticatedKey:
            self.count += 1
            return await real(service, authorization, **kwargs)

        monkeypatch.setattr(TenantService, "authenticate_key", spy)


async def test_a_rule_added_in_one_place_applies_to_every_path(gw: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    _, key = await gw.tenants.create("blocked-later")
    task_id = await completed_task(gw, key)
    lookups = Lookups(monkeypatch)
    for kind in ("status", "submit"):
        await key_known(gw, key)
        before = lookups.count
        assert (await call(gw, kind, key, task_id)).status_code == 200
        assert lookups.count == before, f"the warm {kind} was not answered before routing"

    def no_blocked_tenants(who: AuthenticatedKey, need: Need, origin: str | None) -> None:
        if who.tenant.name.startswith("blocked"):
            raise Forbidden("This tenant is blocked.")

    monkeypatch.setattr(policy, "RULES", [*policy.RULES, no_blocked_tenants])
    for kind in ("status", "submit"):
        for warm in (True, False):
            if warm:
                await key_known(gw, key)
            else:
                forget_keys(gw)
            r = await call(gw, kind, key, task_id)
            assert r.status_code == 403, (kind, warm, r.text)
            assert r.json()["error"]["message"] == "This tenant is blocked."
