"""End-user tokens on real processes (issue 21): two `serve` replicas on one PostgreSQL and the sandbox upstream.

A token minted through one replica works on the other (submit, status, event stream), reads only its end user's
tasks, is refused from an origin it was not minted for, never mints nor reaches /admin, and stops at its expiry.
Revoking its key, rotating it past grace, revoking the tenant's tokens or disabling the tenant through one replica
refuses it on the other within the bound keys have (1 s). And 200 submits racing on both replicas never pass an end
user's images of the day, nor the tenant's: exact, then settled and refunded with the books balanced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from tests.e2e.conftest import (
    Gateway,
    Processes,
    Sandbox,
    gateway_env,
    http_client,
    start_gateways,
)
from tests.fixtures.databases import truncate_all
from tests.support.processes import Process

pytestmark = pytest.mark.e2e

BOUND_S = 1.0
SLACK_S = 2.0  # what a busy CI machine may add between an ops call's answer and our first request (see the key test)
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def replicas(
    postgres_database: str, sandbox_process: Process, module_processes: Processes
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two replicas for the module's tests (each test has tenants of its own)."""
    truncate_all(postgres_database)
    env = gateway_env(postgres_database, sandbox_process.base_url, GATEWAY_DB_POOL_SIZE="15")
    a, b = start_gateways(module_processes, env, ["replica-a", "replica-b"])
    yield a, b


def bearer(credential: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}", **headers}


async def new_tenant(client: httpx.AsyncClient, replica: Gateway, name: str, **limits: int) -> tuple[str, str, str]:
    """(tenant id, its first key, a key of it that may mint), made through the ops API."""
    admin = bearer(replica.env["GATEWAY_ADMIN_TOKEN"])
    r = await client.post(f"{replica.url}/admin/v1/tenants", headers=admin, json={"name": name, "limits": limits})
    assert r.status_code == 201, r.text
    tenant = r.json()
    r = await client.post(
        f"{replica.url}/admin/v1/tenants/{tenant['id']}/keys",
        headers=admin,
        json={"name": "backend", "scopes": ["submit", "read", "mint"]},
    )
    assert r.status_code == 201, r.text
    return tenant["id"], tenant["key"]["key"], r.json()["key"]


async def mint(client: httpx.AsyncClient, replica: Gateway, minter: str, end_user: str, **body: Any) -> str:
    r = await client.post(f"{replica.url}/v1/tokens", headers=bearer(minter), json={"end_user": end_user, **body})
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


async def refused_within(client: httpx.AsyncClient, replica: Gateway, token: str, since: float) -> float:
    """Seconds from `since` until `replica` answers 401 to `token` (polled every 50 ms, against a deadline)."""
    while True:
        r = await client.get(f"{replica.url}/v1/usage", headers=bearer(token))
        if r.status_code == 401:
            return time.monotonic() - since
        assert r.status_code == 200, r.text
        assert time.monotonic() - since < BOUND_S + SLACK_S, "the change never reached the other replica"
        await asyncio.sleep(0.05)


async def warm(client: httpx.AsyncClient, replica: Gateway, token: str) -> None:
    """The token (and its minting key) known in the replica's memory: what a refusal must overcome."""
    for _ in range(3):
        assert (await client.get(f"{replica.url}/v1/usage", headers=bearer(token))).status_code == 200


async def test_a_token_works_on_every_replica_for_its_end_user_only_until_revoked(
    replicas: tuple[Gateway, Gateway], sandbox: Sandbox
) -> None:
    a, b = replicas
    admin = bearer(a.env["GATEWAY_ADMIN_TOKEN"])
    async with http_client() as client:
        tenant_id, key, minter = await new_tenant(client, a, "acme")
        alice = await mint(client, a, minter, "alice")
        bob = await mint(client, b, minter, "bob")

        # Minted on A, used on B: submit, status, stream; the tenant's key reads it too.
        r = await client.post(b.generations, headers=bearer(alice), json={"prompt": "a fox", "n": 2})
        assert r.status_code == 200, r.text
        task_id = r.json()["id"]
        stream = await client.get(f"{a.generations}/{task_id}/events", headers=bearer(alice), timeout=DEADLINE_S)
        assert stream.status_code == 200 and '"status":"completed"' in stream.text, stream.text
        for replica, credential in ((a, alice), (b, alice), (a, key)):
            r = await client.get(f"{replica.generations}/{task_id}", headers=bearer(credential))
            assert r.status_code == 200 and r.json()["status"] == "completed", r.text
        for replica in (a, b):  # another end user's task is a 404, as another tenant's is
            r = await client.get(f"{replica.generations}/{task_id}", headers=bearer(bob))
            assert r.status_code == 404, r.text

        # Origins, minting and the ops API.
        bound = await mint(client, a, minter, "carol", origins=["https://app.example"])
        r = await client.post(b.generations, headers=bearer(bound, Origin="https://evil.example"), json={"prompt": "x"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed", r.text
        r = await client.post(f"{b.url}/v1/tokens", headers=bearer(alice), json={"end_user": "mallory"})
        assert r.status_code == 403, r.text
        assert (await client.get(f"{b.url}/admin/v1/tenants", headers=bearer(alice))).status_code == 401

        # Expiry: a two-second token stops on its own.
        brief = await mint(client, a, minter, "dave", ttl_seconds=2)
        await warm(client, b, brief)
        assert await refused_within(client, b, brief, time.monotonic()) <= 2 + SLACK_S

        # Revoke the tenant's tokens on A -> refused on B within the bound; one minted afterwards works.
        await warm(client, b, alice)
        r = await client.post(f"{a.url}/admin/v1/tenants/{tenant_id}/tokens/revoke", headers=admin)
        assert r.status_code == 200, r.text
        assert await refused_within(client, b, alice, time.monotonic()) <= BOUND_S + SLACK_S
        await asyncio.sleep(0.01)  # a later millisecond than the revocation
        alice = await mint(client, a, minter, "alice")
        await warm(client, b, alice)

        # Disable the tenant on A -> refused on B; enabled again, it works again.
        r = await client.patch(f"{a.url}/admin/v1/tenants/{tenant_id}", headers=admin, json={"status": "disabled"})
        assert r.status_code == 200, r.text
        assert await refused_within(client, b, alice, time.monotonic()) <= BOUND_S + SLACK_S
        r = await client.patch(f"{a.url}/admin/v1/tenants/{tenant_id}", headers=admin, json={"status": "active"})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + BOUND_S + SLACK_S
        while (await client.get(f"{b.url}/v1/usage", headers=bearer(alice))).status_code != 200:
            assert time.monotonic() < deadline, "the enable never reached the other replica"
            await asyncio.sleep(0.05)

        # Rotate the minting key on A without grace -> its tokens refused on B.
        keys = (await client.get(f"{a.url}/admin/v1/tenants/{tenant_id}/keys", headers=admin)).json()["data"]
        minter_id = next(k["id"] for k in keys if k["name"] == "backend")
        r = await client.post(f"{a.url}/admin/v1/keys/{minter_id}/rotate", headers=admin, json={"grace_seconds": 0})
        assert r.status_code in (200, 201), r.text
        assert await refused_within(client, b, alice, time.monotonic()) <= BOUND_S + SLACK_S

        # Revoke the new minting key on A -> its tokens refused on B.
        minter, minter_id = r.json()["key"], r.json()["id"]
        alice = await mint(client, b, minter, "alice")
        await warm(client, b, alice)
        r = await client.delete(f"{a.url}/admin/v1/keys/{minter_id}", headers=admin)
        assert r.status_code == 200, r.text
        assert await refused_within(client, b, alice, time.monotonic()) <= BOUND_S + SLACK_S


ALICE_PER_DAY, BOB_PER_DAY, TENANT_PER_DAY = 50, 30, 70
SUBMITS_EACH = 100  # 200 in all, half to each replica


async def test_end_users_days_are_exact_under_racing_submits_on_two_replicas(
    replicas: tuple[Gateway, Gateway], sandbox: Sandbox
) -> None:
    a, b = replicas
    admin = bearer(a.env["GATEWAY_ADMIN_TOKEN"])
    async with http_client() as client:
        _, key, minter = await new_tenant(client, a, "racers", daily_images=TENANT_PER_DAY)
        alice = await mint(client, a, minter, "alice", images_per_day=ALICE_PER_DAY)
        bob = await mint(client, b, minter, "bob", images_per_day=BOB_PER_DAY)
    sandbox.configure(fail_rate=0.3, seed=11)
    # Held, no task can end (and no failed one be refunded) while submits still arrive.
    async with http_client() as control:
        (await control.post(f"{sandbox.url}/_control/hold")).raise_for_status()
        try:
            answers = await _race([a, b], [alice, bob])
        finally:
            (await control.post(f"{sandbox.url}/_control/release")).raise_for_status()

    accepted = {who: [r for r in rs if r.status_code == 200] for who, rs in answers.items()}
    refused = [r for rs in answers.values() for r in rs if r.status_code != 200]
    assert all(r.status_code == 402 for r in refused), {r.status_code for r in refused}
    # The tenant's day is the binding limit (50 + 30 > 70): exactly 70 in all, neither end user past its own.
    assert len(accepted["alice"]) + len(accepted["bob"]) == TENANT_PER_DAY
    assert len(accepted["alice"]) <= ALICE_PER_DAY and len(accepted["bob"]) <= BOB_PER_DAY
    assert await sandbox.creates_once_settled(TENANT_PER_DAY, DEADLINE_S) == TENANT_PER_DAY, (
        "a refused submit reached the upstream"
    )
    # Whichever limit refused, the answer says which: the end user's own, or the tenant's.
    for who in ("alice", "bob"):
        for r in answers[who]:
            if r.status_code == 402:
                message = r.json()["error"]["message"]
                assert f"end user '{who}'" in message or f"limit is {TENANT_PER_DAY}" in message, message

    async with http_client() as client:
        statuses = await _poll_to_terminal(
            client, [a, b], key, [r.json()["id"] for rs in accepted.values() for r in rs]
        )
        produced = {who: 0 for who in accepted}
        for who, rs in accepted.items():
            produced[who] = sum(1 for r in rs if statuses[r.json()["id"]] == "completed")
        for who, token in (("alice", alice), ("bob", bob)):
            day = (await client.get(f"{b.url}/v1/usage", headers=bearer(token))).json()["day"]
            assert day["used"] == produced[who], (who, day)
        tenant_day = (await client.get(f"{a.url}/v1/usage", headers=bearer(key))).json()
        assert tenant_day["day"]["used"] == sum(produced.values()), tenant_day
        assert tenant_day["in_flight"]["current"] == 0, tenant_day
        drift = await client.get(f"{a.url}/admin/v1/quota/drift", headers=admin)
        assert drift.json() == {"ok": True, "drift": []}, drift.text


async def _race(replicas: list[Gateway], tokens: list[str]) -> dict[str, list[httpx.Response]]:
    limits = httpx.Limits(max_connections=2 * SUBMITS_EACH, max_keepalive_connections=2 * SUBMITS_EACH)
    # The aiohttp transport sends the burst in a fraction of a second of client CPU (see test_quota_race.py).
    async with http_client(transport=AiohttpTransport(limits=limits), timeout=httpx.Timeout(DEADLINE_S)) as client:
        start = asyncio.Event()

        async def submit(i: int) -> httpx.Response:
            await start.wait()
            token = tokens[i % 2]
            replica = replicas[(i // 2) % 2]  # each end user's submits split over both replicas
            return await client.post(replica.generations, headers=bearer(token), json={"prompt": f"race {i}"})

        pending = [asyncio.create_task(submit(i)) for i in range(2 * SUBMITS_EACH)]
        await asyncio.sleep(0)
        start.set()
        answers = await asyncio.gather(*pending)
    return {"alice": list(answers[0::2]), "bob": list(answers[1::2])}


async def _poll_to_terminal(
    client: httpx.AsyncClient, replicas: list[Gateway], key: str, ids: list[str]
) -> dict[str, str]:
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + DEADLINE_S
    while len(statuses) < len(ids):
        assert time.monotonic() < deadline, f"{len(ids) - len(statuses)} tasks still open"
        open_ids = [task_id for task_id in ids if task_id not in statuses]
        answers = await asyncio.gather(
            *[
                client.get(f"{replicas[i % 2].generations}/{task_id}", headers=bearer(key))
                for i, task_id in enumerate(open_ids)
            ]
        )
        for task_id, answer in zip(open_ids, answers, strict=True):
            assert answer.status_code == 200, answer.text
            if answer.json()["status"] in ("completed", "failed"):
                statuses[task_id] = answer.json()["status"]
        await asyncio.sleep(0.2)
    return statuses
