"""The quota proof: racing submits across gateway processes never overdraw, and refunds balance the books.

Real OS processes on real sockets: a sandbox upstream, one or two `seedream-gateway serve` replicas on one database.
The sandbox is held (`POST /_control/hold`) for the whole race, so no task can end, and no failed one be refunded,
while submits still arrive: exactly BUDGET fit however long the race takes on this machine. Released, the tasks
end (about 30 % failed) and the books must balance.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from tests.e2e.conftest import (
    Gateway,
    Processes,
    Sandbox,
    Tenant,
    gateway_env,
    http_client,
    start_gateways,
)

pytestmark = pytest.mark.e2e

BUDGET = 100
SUBMITS = 400
FAIL_RATE = 0.3
POLL_DEADLINE_S = 60.0
RACER = ["tenants", "create", "racer", "--json"]


def _configure_sandbox(sandbox: Sandbox, **changes: Any) -> None:
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        client.patch(f"{sandbox.url}/_control/config", json=changes).raise_for_status()


def _sandbox_control(sandbox: Sandbox, action: str) -> None:
    """`hold` freezes every sandbox task where it stands (new ones stay queued); `release` lets them go on."""
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        response = client.post(f"{sandbox.url}/_control/{action}")
    response.raise_for_status()
    assert response.json()["hold"] is (action == "hold"), response.text


def _cli_ok(gateway: Gateway, *args: str) -> dict[str, Any]:
    result = gateway.processes.run(list(args), gateway.env)
    assert result.returncode == 0, f"{args}: {result.stderr[-2000:]}"
    return result.json()


async def _race(replicas: list[Gateway], tenant: Tenant) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=SUBMITS, max_keepalive_connections=SUBMITS)
    # httpx's own pool spends O(connections) per response on its bookkeeping: with 400 connections the client, not
    # the gateway, was most of the race's 9-10 s (74 req/s against a do-nothing server). The aiohttp transport
    # (the gateway's own upstream transport) sends the same burst in a fraction of a second of client CPU.
    transport = AiohttpTransport(limits=limits)
    async with http_client(transport=transport, timeout=httpx.Timeout(60.0)) as client:
        start = asyncio.Event()

        async def submit(i: int) -> httpx.Response:
            await start.wait()
            gateway = replicas[i % len(replicas)]
            return await client.post(gateway.generations, headers=tenant.headers, json={"prompt": f"race {i}", "n": 1})

        pending = [asyncio.create_task(submit(i)) for i in range(SUBMITS)]
        await asyncio.sleep(0)
        start.set()
        return await asyncio.gather(*pending)


async def _poll_to_terminal(replicas: list[Gateway], tenant: Tenant, ids: list[str]) -> dict[str, str]:
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + POLL_DEADLINE_S
    async with http_client() as client:
        while len(statuses) < len(ids):
            assert time.monotonic() < deadline, f"{len(ids) - len(statuses)} tasks still open"
            open_ids = [task_id for task_id in ids if task_id not in statuses]
            answers = await asyncio.gather(
                *[
                    client.get(f"{replicas[i % len(replicas)].generations}/{task_id}", headers=tenant.headers)
                    for i, task_id in enumerate(open_ids)
                ]
            )
            for task_id, answer in zip(open_ids, answers, strict=True):
                assert answer.status_code == 200, answer.text
                if answer.json()["status"] in ("completed", "failed"):
                    statuses[task_id] = answer.json()["status"]
            await asyncio.sleep(0.2)
    return statuses


async def _prove(replicas: list[Gateway], sandbox: Sandbox, pending: subprocess.Popen[str]) -> None:
    """`pending`: the `tenants create racer` command, spawned while the replicas started."""
    first = replicas[0]
    tenant = first.tenant(pending)
    _cli_ok(first, "tenants", "limits", tenant.id, "--daily-images", str(BUDGET))
    _configure_sandbox(sandbox, fail_rate=FAIL_RATE, seed=11)

    # Held, no task can fail and free its image mid-race: the race may last as long as this machine needs.
    _sandbox_control(sandbox, "hold")
    answers = await _race(replicas, tenant)
    codes = [a.status_code for a in answers]
    assert codes.count(200) == BUDGET, {code: codes.count(code) for code in set(codes)}
    assert codes.count(402) == SUBMITS - BUDGET
    assert all(a.json()["error"]["code"] == "insufficient_quota" for a in answers if a.status_code == 402)
    assert await sandbox.creates_once_settled(BUDGET, POLL_DEADLINE_S) == BUDGET, (
        "a refused submit reached the upstream"
    )
    held = _cli_ok(first, "tenants", "usage", tenant.id)
    assert held["day"]["used"] == BUDGET and held["in_flight"]["current"] == BUDGET, held

    _sandbox_control(sandbox, "release")
    ids = [a.json()["id"] for a in answers if a.status_code == 200]
    statuses = await _poll_to_terminal(replicas, tenant, ids)
    completed = sum(1 for status in statuses.values() if status == "completed")
    assert 0 < completed < BUDGET, "the sandbox was told to fail about 30 % of tasks"

    # Both read the settled books: run side by side (each command is seconds of imports).
    usage_cli = first.processes.spawn(["tenants", "usage", tenant.id], first.env)
    check_cli = first.processes.spawn(["quota", "check"], first.env)
    usage_run, check_run = first.processes.finish(usage_cli), first.processes.finish(check_cli)
    assert usage_run.returncode == 0 and check_run.returncode == 0, usage_run.stderr + check_run.stderr
    usage = usage_run.json()
    assert usage["day"]["used"] == completed, usage
    assert usage["in_flight"]["current"] == 0, usage
    assert check_run.json() == {"ok": True, "drift": []}


async def test_two_replicas_on_postgres_never_overdraw(
    clean_postgres: str, sandbox: Sandbox, processes: Processes
) -> None:
    env = gateway_env(clean_postgres, sandbox.url, GATEWAY_DB_POOL_SIZE="15")
    pending = processes.spawn(RACER, env)
    await _prove(start_gateways(processes, env, ["replica-a", "replica-b"]), sandbox, pending)
