"""Outages of the gateway's dependencies, over real processes: a `seedream-gateway serve` whose PostgreSQL or Redis is
reached through a TCP proxy that the test cuts and restores.

- PostgreSQL cut: every request answers 503 `database_unavailable` with Retry-After (never 500), the log holds a
  couple of lines for the whole outage (no traceback), and the gateway serves again by itself once it is restored.
- Redis cut: rate limits fail open (requests are served, without rate headers), one warning; after the restore the
  limits are enforced again.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, Processes, Sandbox, Tenant, gateway_env, http_client, start_gateway
from tests.fixtures.redis_server import NO_REDIS, redis_server
from tests.fixtures.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

RECOVERY_DEADLINE_S = 40.0
OUTAGE_S = 3.0  # how long each outage lasts: several poller intervals, many requests
MAX_OUTAGE_LOG_LINES = 4  # the outage's start and end, and some slack; never one per request or per sweep
# One line per request whatever happens: the gateway's access line (app.access; uvicorn's, for the sandbox), and
# httpx's line per call to the upstream (at log level debug).
_ACCESS_LINE = re.compile(r' app\.access: |"[A-Z]+ \S+ HTTP/[\d.]+" \d{3}|HTTP Request: [A-Z]+ \S+ "HTTP/')


def _log_lines(text: str) -> list[str]:
    """The log lines that are not per-request lines."""
    return [line for line in text.splitlines() if line.strip() and not _ACCESS_LINE.search(line)]


async def _until(
    probe: Callable[[], Awaitable[tuple[httpx.Response, bool]]],
    deadline_s: float = RECOVERY_DEADLINE_S,
    what: str = "the gateway to serve again",
) -> httpx.Response:
    """Call `probe()` until its answer is the one awaited, against a deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        response, ok = await probe()
        if ok:
            return response
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last answer: {response.status_code}"
        await asyncio.sleep(0.1)


def _submit(gateway: Gateway, client: httpx.AsyncClient, tenant: Tenant, prompt: str) -> Any:
    return client.post(gateway.generations, headers=tenant.headers, json={"prompt": prompt})


async def test_postgres_cut_and_restored_under_a_real_gateway(
    clean_postgres: str, sandbox: Sandbox, processes: Processes
) -> None:
    with TcpProxy.for_url(clean_postgres) as proxy:
        env = gateway_env(proxy.url_for(clean_postgres), sandbox.url, GATEWAY_POLL_INTERVAL_S="0.2")
        pending = processes.spawn_tenant(f"pg-outage-{time.monotonic_ns()}", env)
        gateway = start_gateway(processes, env)
        tenant = gateway.tenant(pending)
        async with http_client() as client:
            first = await _submit(gateway, client, tenant, "before the outage")
            assert first.status_code == 200, first.text
            task_url = f"{gateway.generations}/{first.json()['id']}"
            log_offset = len(gateway.process.log())

            proxy.cut()
            answers: list[httpx.Response] = []
            outage_ends = time.monotonic() + OUTAGE_S
            while time.monotonic() < outage_ends:  # requests of every kind, all through the outage
                answers += [
                    await _submit(gateway, client, tenant, "during the outage"),
                    await client.get(task_url, headers=tenant.headers),
                    await client.get(f"{gateway.url}/v1/usage", headers=tenant.headers),
                ]
                await asyncio.sleep(0.05)
            assert len(answers) >= 9
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.headers["Retry-After"] == "2"
                assert answer.json()["error"]["code"] == "database_unavailable"
                assert answer.json()["error"]["type"] == "api_error"

            proxy.restore()

            async def usage() -> tuple[httpx.Response, bool]:
                r = await client.get(f"{gateway.url}/v1/usage", headers=tenant.headers)
                return r, r.status_code == 200

            await _until(usage)
            for i in range(5):  # and everything else with it, stale pooled connections or not
                r = await _submit(gateway, client, tenant, f"after the outage {i}")
                assert r.status_code == 200, r.text

            async def completed() -> tuple[httpx.Response, bool]:
                r = await client.get(task_url, headers=tenant.headers)
                return r, r.status_code == 200 and r.json()["status"] == "completed"

            await _until(completed, what="the task submitted before the outage to complete")

        outage_log = gateway.process.log()[log_offset:]
        lines = _log_lines(outage_log)
        assert "Traceback" not in outage_log, outage_log[-4000:]
        assert len(lines) <= MAX_OUTAGE_LOG_LINES, lines
        assert sum("database unavailable: " in line for line in lines) == 1, lines
        assert sum("database available again after " in line for line in lines) == 1, lines
        assert all("ERROR" not in line for line in lines), lines


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    with redis_server(Path(tmp_path_factory.mktemp("redis"))) as url:
        yield url


async def test_redis_cut_fails_open_and_limits_come_back(
    clean_postgres: str, sandbox: Sandbox, processes: Processes, redis_url: str | None
) -> None:
    if redis_url is None:
        pytest.xfail(NO_REDIS)
    limit = 3
    with TcpProxy.for_url(redis_url) as proxy:
        env = gateway_env(clean_postgres, sandbox.url, GATEWAY_REDIS_URL=proxy.url_for(redis_url))
        pending = processes.spawn_tenant(f"redis-outage-{time.monotonic_ns()}", env)
        gateway = start_gateway(processes, env)
        tenant = gateway.tenant(pending)
        set_limit = processes.run(["tenants", "limits", tenant.id, "--submit-rpm", str(limit)], env)
        assert set_limit.returncode == 0, set_limit.stderr
        async with http_client() as client:
            r = await _submit(gateway, client, tenant, "counted")
            assert r.status_code == 200, r.text
            assert r.headers["X-RateLimit-Limit"] == str(limit)
            log_offset = len(gateway.process.log())

            proxy.cut()
            served = 0
            outage_ends = time.monotonic() + OUTAGE_S
            while time.monotonic() < outage_ends or served <= 2 * limit:  # well over the limit: let through
                r = await _submit(gateway, client, tenant, "during the Redis outage")
                assert r.status_code == 200, r.text
                assert "X-RateLimit-Remaining" not in r.headers
                served += 1
                await asyncio.sleep(0.05)

            proxy.restore()

            async def counted() -> tuple[httpx.Response, bool]:
                r = await _submit(gateway, client, tenant, "after the Redis outage")
                assert r.status_code in (200, 429), r.text
                return r, "X-RateLimit-Remaining" in r.headers

            await _until(counted, what="the rate limits to be enforced again")
            statuses = []
            for _ in range(2 * limit + 2):  # at most `limit` per window, even if a minute boundary passes
                r = await _submit(gateway, client, tenant, "until refused")
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert r.json()["error"]["code"] == "rate_limit_exceeded"
                    assert int(r.headers["Retry-After"]) >= 1
                    break
            assert statuses[-1] == 429, statuses

        outage_log = gateway.process.log()[log_offset:]
        lines = _log_lines(outage_log)
        assert "Traceback" not in outage_log, outage_log[-4000:]
        assert len(lines) <= MAX_OUTAGE_LOG_LINES, lines
        assert sum("redis unavailable: " in line for line in lines) == 1, lines
        assert sum("redis available again after " in line for line in lines) == 1, lines


async def test_a_create_answered_while_the_database_is_away_is_kept_and_completes(
    clean_postgres: str, sandbox: Sandbox, processes: Processes
) -> None:
    """The upstream accepts a create, then the ledger is unreachable before its answer is written: the caller gets
    its task (never a 503 for a task that is charged), and the answer is written when the database is back, so the
    task completes and is charged exactly its images (issue 19, item 3)."""
    with TcpProxy.for_url(clean_postgres) as proxy:
        env = gateway_env(proxy.url_for(clean_postgres), sandbox.url, GATEWAY_POLL_INTERVAL_S="0.2")
        pending = processes.spawn_tenant(f"kept-{time.monotonic_ns()}", env)
        gateway = start_gateway(processes, env)
        tenant = gateway.tenant(pending)
        sandbox.configure(create_latency_seconds=2.0, task_seconds=1.0, queue_seconds=0.2)
        creates = sandbox.stats()["create"]
        async with http_client() as client:
            submit = asyncio.create_task(
                client.post(gateway.generations, headers=tenant.headers, json={"prompt": "kept", "n": 2})
            )
            deadline = time.monotonic() + RECOVERY_DEADLINE_S
            while sandbox.stats()["create"] == creates:  # the create call is under way upstream
                assert time.monotonic() < deadline and not submit.done(), "the create call never reached the sandbox"
                await asyncio.sleep(0.05)
            proxy.cut()
            answer = await submit
            assert answer.status_code == 200, answer.text
            task_url = f"{gateway.generations}/{answer.json()['id']}"
            await asyncio.sleep(0.5)  # a few reconciler sweeps fail meanwhile
            proxy.restore()

            async def completed() -> tuple[httpx.Response, bool]:
                r = await client.get(task_url, headers=tenant.headers)
                return r, r.status_code == 200 and r.json()["status"] in ("completed", "failed")

            done = await _until(completed, what="the kept task to end")
            assert done.json()["status"] == "completed", done.text
            assert len(done.json()["result"]["data"]) == 2
            usage = await client.get(f"{gateway.url}/v1/usage", headers=tenant.headers)
            assert usage.json()["day"]["used"] == 2, usage.text
        assert "kept upstream answer written" in gateway.process.log()
