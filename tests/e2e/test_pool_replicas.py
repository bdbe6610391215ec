"""Two `serve` replicas on one PostgreSQL share the upstream key pool: a 429 seen by A cools the key on B, and a
key added through A's ops API is used by B within the invalidation bound. Real processes, real sockets, the sandbox
process as the upstream; every wait polls against a deadline (no fixed sleep).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, Processes, Sandbox, gateway_env, http_client, start_gateways

pytestmark = pytest.mark.e2e

KEY_X = "sk-e2e-pool-x-0123456789"
KEY_Y = "sk-e2e-pool-y-0123456789"
COOLDOWN_S = 60  # the sandbox's Retry-After: outlasts the test, however slow the machine
# The invalidator's bound is 0.5 s; this leaves room for a busy two-core machine running four processes.
DEADLINE_S = 10.0
STEP_S = 0.05


def sandbox_fingerprint(key: str) -> str:
    """How the sandbox names a key in `/_control/stats` (`by_key`)."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def creates(sandbox: Sandbox, key: str) -> int:
    counts: dict[str, int] = sandbox.stats()["by_key"].get(sandbox_fingerprint(key), {})
    return counts.get("create", 0)


def admin(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.env['GATEWAY_ADMIN_TOKEN']}"}


async def until(client: httpx.AsyncClient, call: Any, done: Any, what: str) -> tuple[httpx.Response, float]:
    """Repeat `call()` until `done(response)`; the response and the seconds it took."""
    start = time.monotonic()
    while True:
        response = await call()
        if done(response):
            return response, time.monotonic() - start
        assert time.monotonic() - start < DEADLINE_S, f"{what}: not within {DEADLINE_S} s; last: {response.text}"
        await asyncio.sleep(STEP_S)


async def test_replicas_share_cooldowns_and_new_keys(
    clean_postgres: str, processes: Processes, sandbox: Sandbox
) -> None:
    sandbox.configure(retry_after_seconds=COOLDOWN_S)
    # No reconciler: the tasks that wait here would be sent again and blur the per-key counts this test is about.
    env = gateway_env(clean_postgres, sandbox.url, GATEWAY_UPSTREAM_KEYS=KEY_X, GATEWAY_POLL_INTERVAL_S="0")
    pending = processes.spawn_tenant("acme", env)
    a, b = start_gateways(processes, env, ["serve-a", "serve-b"])
    acme = a.tenant(pending)

    async with http_client() as client:

        async def submit_on_b(prompt: str = "a fox") -> httpx.Response:
            return await client.post(b.generations, json={"prompt": prompt}, headers=acme.headers)

        # 1. The only key answers 429 on A: A cools it for the Retry-After; the task waits (`queued`).
        refused = await client.post(a.generations, json={"prompt": "busy [fault:429]"}, headers=acme.headers)
        assert refused.status_code == 200 and refused.json()["status"] == "queued", refused.text
        assert creates(sandbox, KEY_X) == 1

        # 2. B learns of the cooldown (its own view within the bound, the database's at once): its submits wait too,
        # and nothing is sent with the cooling key.
        for _ in range(3):
            answer = await submit_on_b()
            assert answer.status_code == 200 and answer.json()["status"] == "queued", answer.text
        assert creates(sandbox, KEY_X) == 1  # B never sent anything with the cooling key

        # 3. A key added through A's ops API is used by B: B's next submits go to it, never to X.
        added = await client.post(f"{a.url}/admin/v1/upstream-keys", headers=admin(a), json={"name": "y", "key": KEY_Y})
        assert added.status_code == 201, added.text
        assert KEY_Y not in added.text
        answer, took = await until(client, submit_on_b, lambda r: creates(sandbox, KEY_Y) >= 1, "B uses the new key")
        assert creates(sandbox, KEY_Y) == 1 and creates(sandbox, KEY_X) == 1
        print(f"B used the key added on A {took:.2f} s after it was added")

        # 4. The task is pinned to the new key on every replica: A polls it to its end with that key.
        task_id = answer.json()["id"]
        done, _ = await until(
            client,
            lambda: client.get(f"{a.generations}/{task_id}", headers=acme.headers),
            lambda r: r.status_code == 200 and r.json()["status"] in ("completed", "failed"),
            "the task ends",
        )
        assert done.json()["status"] == "completed", done.text
        statuses = sandbox.stats()["by_key"][sandbox_fingerprint(KEY_Y)].get("status", 0)
        assert statuses >= 1 and "status" not in sandbox.stats()["by_key"][sandbox_fingerprint(KEY_X)]

        listed = await client.get(f"{b.url}/admin/v1/upstream-keys", headers=admin(b))
        keys = {k["name"]: k for k in listed.json()["data"]}
        assert keys["configured-1"]["status"] == "cooling" and keys["y"]["status"] == "active"
        assert keys["y"]["in_flight"] == 0
        assert KEY_X not in listed.text and KEY_Y not in listed.text

    for log in (a.process, b.process):
        text = log.tail(10**7)
        assert KEY_X not in text and KEY_Y not in text
