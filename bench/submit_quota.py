"""What quotas and rate windows cost a submit: p50/p90/p99 and throughput, quotas off vs. on, on PostgreSQL.

Real processes on real sockets: one sandbox upstream (`seedream-gateway sandbox`) and, per configuration, a gateway
(`seedream-gateway serve`) on its own freshly migrated PostgreSQL database, set up with the ops commands (`migrate`,
`tenants create`, `tenants limits`). The load generator (aiohttp on uvloop, in this process) POSTs
`/v1/images/generations` with a fixed number of requests per (configuration, concurrency), in rounds that alternate
the configurations so that drift of the machine hits all of them alike; one gateway runs at a time (started afresh
for its turn in each round), so that only its connection pool is open on the server, and with its background poller
off (GATEWAY_POLL_INTERVAL_S=0). The CPU time of the gateway and of PostgreSQL is read from /proc around every
measured chunk, and lock waits are sampled from pg_stat_activity. Then the database work of a submit is timed on
its own, in-process through the app's own code (the admission statement of app/tasks/admission.py and the rest),
without HTTP.

    .venv/bin/python bench/submit_quota.py [--requests N] [--concurrency 1,32] [--database-url URL]
                                           [--redis-url URL] [--out bench/RESULTS.md]

See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import redis.asyncio
from common import (
    DEFAULT_OUT,
    HOST,
    BenchError,
    Server,
    all_processes,
    asyncpg_url,
    clean_env,
    cli_command,
    command_line,
    cores,
    create_database,
    database_name,
    display_path,
    drop_database,
    exit_code,
    free_port,
    last_json,
    machine,
    machine_busy,
    markers,
    percentile,
    plain_url,
    proc_stat,
    progress,
    run_async,
    run_cli,
    shown_url,
    start_server,
    tail,
    versions,
    wait_ready,
    write_section,
)

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DATABASE_ENV = ("BENCH_DATABASE_URL", "GATEWAY_TEST_DATABASE_URL")
REDIS_ENV = ("BENCH_REDIS_URL", "GATEWAY_REDIS_URL")

UPSTREAM_KEY = "sk-bench-upstream-0123456789"
TENANT = "bench"
BODY = json.dumps({"prompt": "bench", "n": 1}).encode()
HIGH = 1_000_000_000  # a limit no run comes near (the columns are 32-bit integers)
BUDGETS = {"--daily-images": HIGH, "--monthly-images": HIGH, "--max-in-flight": HIGH}
LOCK_SAMPLE_S = 0.02  # how often pg_stat_activity is sampled for lock waits during a chunk
SATURATED = 0.85  # gateway core share above which a row is reported as CPU-bound
BUSY_WARNING = 0.15  # machine share in use before the run above which the report warns of noise
CONNECTION_MARGIN = 10  # connections of the server left to others (the setup commands, psql, ...)

REQUEST_TIMEOUT_S = 30.0
SECTION = "submit_quota"
SECTION_BEGIN, SECTION_END = markers(SECTION)
INTRO = f"""# Benchmark results

`bench/submit_quota.py` measures what the quota bookkeeping and the per-minute rate windows cost a submit
(`POST /v1/images/generations`): latency percentiles and throughput of one gateway process at concurrency 1 and 32,
with quotas off, quotas on, quotas plus rate windows in PostgreSQL and quotas plus rate windows in Redis, all in the
same run against the same sandbox upstream, each gateway on its own fresh PostgreSQL database. A second table times
the database work of a submit in-process (no HTTP), to show the cost of the quota statements alone.

Reproduce with `.venv/bin/python bench/submit_quota.py` (PostgreSQL and Redis on 127.0.0.1 by default; see
`bench/README.md` for the options and what each row means). The section below is replaced on every run.

{SECTION_BEGIN}
{SECTION_END}
"""


# --- configurations ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    quotas: bool
    limits: Mapping[str, int]
    redis: bool = False


CONFIGS = (
    Config("off", "quotas off", quotas=False, limits={}),
    Config("quotas", "quotas on", quotas=True, limits=BUDGETS),
    Config("rate-pg", "quotas + rate windows (PostgreSQL)", quotas=True, limits={**BUDGETS, "--submit-rpm": HIGH}),
    Config(
        "rate-redis", "quotas + rate windows (Redis)", quotas=True, limits={**BUDGETS, "--submit-rpm": HIGH}, redis=True
    ),
)
BASELINE = "off"
QUOTAS_ON = "quotas"


# --- databases --------------------------------------------------------------------------------------------------


async def pg_server_info(server_url: str) -> dict[str, Any]:
    try:
        conn = await asyncpg.connect(plain_url(server_url), timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as e:
        raise BenchError(
            f"PostgreSQL at {shown_url(server_url)} is not reachable ({type(e).__name__}: {e}); "
            "pass --database-url or set BENCH_DATABASE_URL / GATEWAY_TEST_DATABASE_URL"
        ) from e
    try:
        info: dict[str, Any] = {}
        for name in ("server_version", "synchronous_commit", "fsync", "max_connections"):
            info[name] = str(await conn.fetchval(f"SHOW {name}"))
        info["connections"] = int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity"))
        info["postmaster"] = postmaster_of(int(await conn.fetchval("SELECT pg_backend_pid()")))
        return info
    finally:
        await conn.close()


def postmaster_of(backend_pid: int) -> int | None:
    """The server's main process when it runs on this machine (its CPU time can then be read from /proc)."""
    backend = proc_stat(backend_pid)
    if backend is None or backend[2] != "postgres":
        return None
    parent = proc_stat(backend[0])
    return backend[0] if parent is not None and parent[2] == "postgres" else None


async def redis_version(url: str) -> tuple[str | None, str]:
    """Redis's version, or None and the reason it cannot be used."""
    client = redis.asyncio.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        info = await client.info("server")
        return str(info.get("redis_version", "?")), ""
    except Exception as e:  # any failure means: no Redis row
        return None, f"{type(e).__name__}: {e}"
    finally:
        await client.aclose()


# --- CPU time from /proc ----------------------------------------------------------------------------------------


@dataclass
class CpuSnapshot:
    machine: float | None
    processes: dict[int, tuple[int, float, str]]
    generator: float


def cpu_snapshot() -> CpuSnapshot:
    own = os.times()
    return CpuSnapshot(machine_busy(), all_processes(), own.user + own.system)


@dataclass
class CpuDelta:
    gateway: float
    postgres: float | None
    ours: float
    machine: float | None


def cpu_delta(
    before: CpuSnapshot, after: CpuSnapshot, gateway_pid: int, our_pids: set[int], postmaster: int | None
) -> CpuDelta:
    """CPU used between two snapshots by the measured gateway, by PostgreSQL (all its processes) and by the whole
    benchmark (generator, gateways, sandbox, PostgreSQL, Redis); backends that exited in between are not seen."""

    def used(pid: int) -> float:
        end = after.processes.get(pid)
        start = before.processes.get(pid)
        return 0.0 if end is None else end[1] - (start[1] if start is not None else 0.0)

    postgres = None
    if postmaster is not None:
        postgres = sum(used(pid) for pid, stat in after.processes.items() if pid == postmaster or stat[0] == postmaster)
    redis_cpu = sum(used(pid) for pid, stat in after.processes.items() if stat[2] == "redis-server")
    ours = (after.generator - before.generator) + sum(used(pid) for pid in our_pids) + (postgres or 0.0) + redis_cpu
    machine = None if after.machine is None or before.machine is None else after.machine - before.machine
    return CpuDelta(used(gateway_pid), postgres, ours, machine)


# --- measurements -----------------------------------------------------------------------------------------------


@dataclass
class Chunk:
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)


@dataclass
class Measurement:
    """Everything measured for one (configuration, concurrency)."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    round_p50: list[float] = field(default_factory=list)
    gateway_cpu: float = 0.0
    postgres_cpu: float | None = 0.0
    connections: int | None = 0
    held: int = 0
    lock_waits: list[float] = field(default_factory=list)

    def add(self, chunk: Chunk, requests: int, cpu: CpuDelta, connections: int | None) -> None:
        self.latencies.extend(chunk.latencies)
        self.wall += chunk.wall
        self.requests += requests
        self.errors.update(chunk.errors)
        for sample in chunk.samples:
            if sample not in self.samples and len(self.samples) < 3:
                self.samples.append(sample)
        self.round_p50.append(percentile(sorted(chunk.latencies), 0.5))
        self.gateway_cpu += cpu.gateway
        self.postgres_cpu = (
            None if self.postgres_cpu is None or cpu.postgres is None else self.postgres_cpu + cpu.postgres
        )
        self.connections = None if self.connections is None or connections is None else self.connections + connections

    def stats(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        return {
            "rps": self.requests / self.wall if self.wall else math.nan,
            "p50": percentile(ordered, 0.50) * 1000,
            "p90": percentile(ordered, 0.90) * 1000,
            "p99": percentile(ordered, 0.99) * 1000,
        }


@dataclass
class Phase:
    """Machine-wide CPU over the measured chunks of one concurrency level."""

    wall: float = 0.0
    machine: float | None = 0.0
    ours: float = 0.0


@dataclass
class Gateway:
    config: Config
    database_url: str
    tenant_id: str
    tenant_key: str
    limits: dict[str, Any]
    server: Server | None = None
    sent: int = 0  # submits sent to it over the whole run, warm-ups included: the tasks its ledger must hold

    @property
    def generations(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/v1/images/generations"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tenant_key}", "Content-Type": "application/json"}

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.popen.pid


async def load(session: aiohttp.ClientSession, gateway: Gateway, total: int, concurrency: int) -> Chunk:
    """`total` submits from `concurrency` workers in a closed loop; each request's latency on success (HTTP 200)."""
    chunk = Chunk()
    remaining = total
    gateway.sent += total
    url, headers = gateway.generations, gateway.headers

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            try:
                async with session.post(url, data=BODY, headers=headers) as response:
                    payload = await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError) as e:
                chunk.errors[type(e).__name__] += 1
                chunk.samples.append(f"{type(e).__name__}: {e}")
                continue
            elapsed = time.perf_counter() - start
            if status == 200:
                chunk.latencies.append(elapsed)
            else:
                chunk.errors[f"HTTP {status}"] += 1
                chunk.samples.append(f"HTTP {status}: {payload[:300].decode(errors='replace')}")

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    chunk.wall = time.perf_counter() - began
    return chunk


@dataclass
class Plan:
    concurrency: list[int]
    requests: dict[int, int]
    rounds: int
    warmup: int


def chunk_sizes(total: int, rounds: int) -> list[int]:
    base, extra = divmod(total, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


async def sessions_opened(conn: Any, name: str) -> int | None:
    """Connections ever opened to a database (pg_stat_database.sessions, PostgreSQL 14+); None if unknown."""
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value = await conn.fetchval("SELECT sessions FROM pg_stat_database WHERE datname = $1", name)
    except asyncpg.PostgresError:
        return None
    return None if value is None else int(value)


async def open_connections(conn: Any, name: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name))


@dataclass
class Launcher:
    """Starts a configuration's gateway (`seedream-gateway serve`) on its database."""

    workdir: Path
    env: dict[str, str]
    redis_url: str | None
    started: list[Server] = field(default_factory=list)

    def start(self, gateway: Gateway) -> Server:
        env = {**self.env, "GATEWAY_DATABASE_URL": gateway.database_url}
        env["GATEWAY_QUOTAS_ENABLED"] = "true" if gateway.config.quotas else "false"
        if gateway.config.redis and self.redis_url:
            env["GATEWAY_REDIS_URL"] = self.redis_url
        name = f"serve-{gateway.config.key}-{len(self.started) + 1}"
        command = [*cli_command(), "serve", "--host", HOST]
        server = start_server(name, command, clean_env(**env), self.workdir, free_port())
        self.started.append(server)
        try:
            wait_ready(server, "/healthz")
        except BaseException:
            server.stop()
            raise
        return server


async def sample_lock_waits(conn: Any, name: str, stop: asyncio.Event) -> float:
    """The mean number of the database's backends waiting for a lock (row locks on hot counters), sampled."""
    total = samples = 0
    while not stop.is_set():
        total += int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'", name
            )
        )
        samples += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LOCK_SAMPLE_S)
    return total / samples if samples else 0.0


async def run_http(
    plan: Plan,
    gateways: list[Gateway],
    launcher: Launcher,
    server_url: str,
    sandbox_pid: int,
    postmaster: int | None,
) -> tuple[dict[tuple[str, int], Measurement], dict[int, Phase], list[str]]:
    """Rounds of: for every configuration (order rotated each round), start its gateway, warm it up, measure one
    chunk per concurrency, stop it. Only one gateway runs at a time, so only its pool is open on the server."""
    results: dict[tuple[str, int], Measurement] = {}
    phases: dict[int, Phase] = {c: Phase() for c in plan.concurrency}
    problems: list[str] = []
    sizes = {c: chunk_sizes(plan.requests[c], plan.rounds) for c in plan.concurrency}
    top = max(plan.concurrency)
    connector = aiohttp.TCPConnector(limit=top, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    admin = await asyncpg.connect(plain_url(server_url), timeout=5)

    async def measure(session: aiohttp.ClientSession, gateway: Gateway, index: int) -> None:
        # Warm-up: the database pool, compiled-statement caches, the upstream client's connections (discarded).
        warm = await load(session, gateway, plan.warmup, top)
        if warm.errors:
            progress(f"warm-up of {gateway.config.label}: {dict(warm.errors)}")
        name = database_name(gateway.database_url)
        for concurrency in plan.concurrency:
            # A short discarded run at this concurrency first, so that the chunk starts in a steady state.
            await load(session, gateway, max(2 * concurrency, 20), concurrency)
            size = sizes[concurrency][index]
            opened_before = await sessions_opened(admin, name)
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_lock_waits(admin, name, stop))
            before = cpu_snapshot()
            chunk = await load(session, gateway, size, concurrency)
            cpu = cpu_delta(before, cpu_snapshot(), gateway.pid, {gateway.pid, sandbox_pid}, postmaster)
            stop.set()
            lock_waits = await sampler
            opened_after = await sessions_opened(admin, name)
            opened = None if opened_before is None or opened_after is None else opened_after - opened_before
            measurement = results.setdefault((gateway.config.key, concurrency), Measurement())
            measurement.add(chunk, size, cpu, opened)
            measurement.lock_waits.append(lock_waits)
            measurement.held = max(measurement.held, await open_connections(admin, name))
            phase = phases[concurrency]
            phase.wall += chunk.wall
            phase.ours += cpu.ours
            phase.machine = None if phase.machine is None or cpu.machine is None else phase.machine + cpu.machine

    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for index in range(plan.rounds):
                shift = index % len(gateways)
                for gateway in gateways[shift:] + gateways[:shift]:  # every configuration goes first now and then
                    server = await asyncio.to_thread(launcher.start, gateway)
                    gateway.server = server
                    try:
                        await measure(session, gateway, index)
                    finally:
                        await asyncio.to_thread(server.stop)
                    if server.popen.returncode not in (0, -signal.SIGTERM):
                        problems.append(f"{server.name} exited with {server.popen.returncode}")
                        progress(f"{problems[-1]}; log tail:\n{tail(server.log_path)}")
                progress(f"round {index + 1}/{plan.rounds} done")
    finally:
        await admin.close()
    return results, phases, problems


# --- the database work alone ------------------------------------------------------------------------------------

MICRO_LABELS = {
    "checkout": "connection checkout, as configured (pool_pre_ping=True)",
    "checkout_noping": "connection checkout without pre-ping (for comparison)",
    "insert": "task admission statement, quotas off (the row and the key's slot)",
    "reserve_tx": "task admission statement, quotas on (the row, the reservation and the key's slot)",
    "window_pg": "rate window hit, PostgreSQL (own transaction)",
    "window_redis": "rate window hit, Redis (one script call)",
}


@dataclass
class Micro:
    times: dict[str, list[float]]  # seconds per call, by MICRO_LABELS key


async def run_micro(database_url: str, redis_url: str | None, iterations: int) -> Micro:
    """Time, one call at a time, the transactions of a submit through the app's own code."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.contract import GenerationRequest
    from app.core.clock import utcnow
    from app.core.db.engine import autocommit_engine, create_engine, create_session_factory
    from app.core.ids import new_id
    from app.core.security import KeyMaterial
    from app.models.task import Task, TaskStatus
    from app.quotas import service as quotas
    from app.quotas.rate_limits import WINDOW_S, RedisWindowStore, SqlWindowStore
    from app.tasks import admission
    from app.tenants.service import TenantService
    from app.upstream.pool import UpstreamKeyPool
    from app.upstream.service import PoolService

    engine = create_engine(database_url, pool_size=2)  # the app's engine settings, pre-ping included
    no_ping = create_async_engine(database_url, pool_size=2, max_overflow=0, pool_pre_ping=False)
    sessions = create_session_factory(engine)
    autocommit = autocommit_engine(engine)
    keys = KeyMaterial(secrets.token_urlsafe(32))
    pool_service = PoolService(sessions, keys, utcnow, UpstreamKeyPool(keys, utcnow))
    limits = {"daily_images": HIGH, "monthly_images": HIGH, "max_in_flight": HIGH, "submit_rpm": HIGH}
    tenant, _ = await TenantService(sessions, keys, utcnow).create("micro", limits=limits)
    await pool_service.load([UPSTREAM_KEY])
    upstream_key_id = pool_service.pool.choose().id
    body = GenerationRequest.model_validate({"prompt": "bench", "n": 1}).to_upstream()
    sql_windows = SqlWindowStore(sessions)
    redis_windows = RedisWindowStore(redis.asyncio.from_url(redis_url)) if redis_url else None
    micro = Micro({key: [] for key in MICRO_LABELS})
    recording = False

    def record(key: str, seconds: float) -> None:
        if recording:
            micro.times[key].append(seconds)

    def new_task() -> Task:
        now = utcnow()
        return Task(
            id=new_id("task_img_"),
            tenant_id=tenant.id,
            upstream_key_id=upstream_key_id,
            model=body["model"],
            request=body,
            n=1,
            status=TaskStatus.SUBMITTING,
            progress=0,
            client_business_id=None,
            created_at=now,
            updated_at=now,
        )

    async def checkout() -> None:
        start = time.perf_counter()
        async with engine.connect():
            pass
        record("checkout", time.perf_counter() - start)

    async def checkout_noping() -> None:
        start = time.perf_counter()
        async with no_ping.connect():
            pass
        record("checkout_noping", time.perf_counter() - start)

    async def admit(task: Task, with_quota: bool) -> None:
        # What TaskService.submit sends: the row, its reservation (quotas on) and its slot on the key, one statement.
        reservation = quotas.reservation(tenant, task.id, 1, task.created_at) if with_quota else None
        later = task.created_at + dt.timedelta(minutes=1)
        async with autocommit.connect() as connection:
            assert await admission.admit(
                connection, task, reservation, upstream_key_id, check_sent=later, check_waiting=later
            )

    async def insert_only() -> None:
        task = new_task()
        start = time.perf_counter()
        await admit(task, with_quota=False)
        record("insert", time.perf_counter() - start)

    async def insert_and_reserve() -> None:
        task = new_task()
        start = time.perf_counter()
        await admit(task, with_quota=True)
        record("reserve_tx", time.perf_counter() - start)

    def window() -> int:
        return int(time.time()) // WINDOW_S * WINDOW_S

    async def sql_hit() -> None:
        start = time.perf_counter()
        assert await sql_windows.hit(tenant.id, "submit", window(), HIGH) is not None
        record("window_pg", time.perf_counter() - start)

    async def redis_hit() -> None:
        assert redis_windows is not None
        start = time.perf_counter()
        assert await redis_windows.hit(tenant.id, "submit", window(), HIGH) is not None
        record("window_redis", time.perf_counter() - start)

    steps: list[Callable[[], Awaitable[None]]] = [checkout, checkout_noping, insert_only, insert_and_reserve, sql_hit]
    if redis_windows is not None:
        steps.append(redis_hit)
    try:
        warmup = min(100, iterations)
        for i in range(warmup + iterations):
            recording = i >= warmup
            shift = i % len(steps)
            for step in steps[shift:] + steps[:shift]:  # alternating order, as for the HTTP rows
                await step()
    finally:
        if redis_windows is not None:
            await redis_windows.aclose()
        await engine.dispose()
        await no_ping.dispose()
    micro.times = {key: values for key, values in micro.times.items() if values}
    return micro


# --- the run ----------------------------------------------------------------------------------------------------


@dataclass
class Environment:
    server_url: str
    redis_url: str | None
    redis_note: str
    pg: dict[str, Any]
    redis_version: str | None


def prepare_gateway(config: Config, server_url: str, env: Mapping[str, str], workdir: Path) -> Gateway:
    """A fresh database, migrated, with one tenant and its limits: what ops would do, with the ops commands."""
    url = create_database(server_url, f"gw_bench_{config.key.replace('-', '_')}")
    try:
        cli_env = {**env, "GATEWAY_DATABASE_URL": url}
        run_cli(["migrate"], cli_env, workdir)
        created = last_json(run_cli(["tenants", "create", TENANT, "--json"], cli_env, workdir))
        options = [str(part) for option, value in config.limits.items() for part in (option, value)]
        limits = last_json(run_cli(["tenants", "limits", TENANT, *options], cli_env, workdir))
    except BaseException:
        drop_database(url)
        raise
    return Gateway(config, url, created["tenant_id"], created["key"], limits)


def check_limits(gateway: Gateway) -> None:
    limits = {k: v for k, v in gateway.limits.items() if k != "tenant_id"}
    expected = {option.removeprefix("--").replace("-", "_"): value for option, value in gateway.config.limits.items()}
    for name, value in limits.items():
        if value != expected.get(name):
            raise BenchError(f"{gateway.config.label}: tenant limit {name} is {value}, expected {expected.get(name)}")


async def ledger_summary(gateway: Gateway, redis_url: str | None) -> str:
    """What the run left in the books: tasks, quota counters, rate windows (proves each configuration did its work)."""
    conn = await asyncpg.connect(plain_url(gateway.database_url), timeout=5)
    try:
        tasks = int(await conn.fetchval("SELECT count(*) FROM tasks"))
        refreshed = int(await conn.fetchval("SELECT count(*) FROM tasks WHERE refreshed_at IS NOT NULL"))
        counters = {
            r["period"]: int(r["amount"]) for r in await conn.fetch("SELECT period, amount FROM quota_counters")
        }
        entries = int(await conn.fetchval("SELECT count(*) FROM quota_entries"))
        windows = int(await conn.fetchval("SELECT coalesce(sum(count), 0) FROM rate_windows"))
    finally:
        await conn.close()
    day = next((v for k, v in counters.items() if k.startswith("day:")), 0)
    month = next((v for k, v in counters.items() if k.startswith("month:")), 0)
    inflight = counters.get("inflight", 0)
    parts = [
        f"{tasks} tasks of {gateway.sent} submits sent ({refreshed} refreshed from the upstream since)",
        f"{entries} quota entries",
        f"counters day/month/in-flight {day}/{month}/{inflight}",
    ]
    ok = (day == month == inflight == entries == tasks) if gateway.config.quotas else not counters and not entries
    ok = ok and tasks == gateway.sent and refreshed == 0  # nothing else touched the tasks: the poller is off
    if gateway.config.limits.get("--submit-rpm") and not gateway.config.redis:
        parts.append(f"PostgreSQL rate window at {windows}")
        ok = ok and windows > 0
    if gateway.config.redis and redis_url:
        client = redis.asyncio.from_url(redis_url)
        try:
            found = [key async for key in client.scan_iter(match=f"gw:rl:{gateway.tenant_id}:submit:*")]
            counts = [int(v) for v in await client.mget(found) if v is not None] if found else []
        finally:
            await client.aclose()
        parts.append(f"Redis rate window at {max(counts, default=0)}")
        ok = ok and bool(counts) and windows == 0
    return f"{gateway.config.label}: {', '.join(parts)}: {'as expected' if ok else 'UNEXPECTED'}"


def background_load(seconds: float = 2.0) -> float | None:
    """The share of the machine's CPU in use (by anything) over a short sample, before the benchmark starts."""
    before = machine_busy()
    time.sleep(seconds)
    after = machine_busy()
    return None if before is None or after is None else (after - before) / (seconds * cores())


def fit_pool_size(wanted: int, pg: Mapping[str, Any]) -> tuple[int, str]:
    """One gateway runs at a time, and its pool (no overflow: `app.core.db.engine`) must fit in max_connections."""
    fitting = int(pg["max_connections"]) - int(pg["connections"]) - CONNECTION_MARGIN
    if fitting >= wanted:
        return wanted, ""
    if fitting < 1:
        raise BenchError(f"the PostgreSQL server has no room for a gateway ({fitting} connections free)")
    return fitting, (
        f"--pool-size {wanted} lowered to {fitting} to fit in max_connections={pg['max_connections']} "
        f"({pg['connections']} in use)"
    )


def run(args: argparse.Namespace) -> int:
    concurrency = sorted({int(part) for part in args.concurrency.split(",") if part.strip()})
    if not concurrency or min(concurrency) < 1:
        raise BenchError("--concurrency takes positive integers, e.g. 1,32")
    requests = {c: args.requests or (500 if c == 1 else 2000) for c in concurrency}
    rounds = max(1, min(args.rounds, min(requests.values())))
    plan = Plan(concurrency, requests, rounds, args.warmup)
    environment = probe(args.database_url, args.redis_url)
    configs = [c for c in CONFIGS if not c.redis or environment.redis_url]
    notes: list[str] = []
    if environment.redis_url is None:
        notes.append(f"Redis not usable ({environment.redis_note}): the Redis row is skipped.")
        progress(notes[-1])
    idle = background_load()
    if idle is not None and idle > BUSY_WARNING:
        notes.append(
            f"the machine was {idle:.0%} busy with other processes just before the run: expect noisier numbers "
            "(see the CPU line under each table)."
        )
        progress(notes[-1])
    pool_size, pool_note = fit_pool_size(args.pool_size or max(concurrency), environment.pg)
    if pool_note:
        notes.append(pool_note + ".")
        progress(pool_note)

    workdir = Path(tempfile.mkdtemp(prefix="submit-quota-"))
    sandbox_port = free_port()
    base = {
        "GATEWAY_UPSTREAM_BASE_URL": f"http://{HOST}:{sandbox_port}",
        "GATEWAY_UPSTREAM_KEYS": UPSTREAM_KEY,
        "GATEWAY_ADMIN_TOKEN": "adm-bench-" + secrets.token_urlsafe(16),
        "GATEWAY_SECRET_KEY": secrets.token_urlsafe(32),
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_DB_POOL_SIZE": str(pool_size),
        "GATEWAY_POLL_INTERVAL_S": "0",  # no background sweeps of the open tasks in the middle of a chunk
    }
    gateways: list[Gateway] = []
    servers: list[Server] = []
    launcher = Launcher(workdir, base, environment.redis_url)
    micro_url: str | None = None
    started = time.monotonic()
    try:
        progress(f"preparing {len(configs)} databases on {shown_url(environment.server_url)} (logs: {workdir})")
        with ThreadPoolExecutor(max_workers=len(configs) + 1) as executor:
            futures = [
                executor.submit(prepare_gateway, config, environment.server_url, clean_env(**base), workdir)
                for config in configs
            ]
            micro_future = (
                executor.submit(create_database, environment.server_url, "gw_bench_micro")
                if args.micro_iterations
                else None
            )
            failure: BaseException | None = None
            for future in futures:
                try:
                    gateways.append(future.result())
                except BaseException as e:
                    failure = failure or e
            if micro_future is not None:
                micro_url = micro_future.result()
            if failure is not None:
                raise failure
        for gateway in gateways:
            check_limits(gateway)
        if micro_url is not None:
            from app.core.db.migrate import upgrade

            upgrade(micro_url)

        # One sandbox upstream for all gateways; its tasks never finish during the run, and nobody polls them.
        sandbox_env = clean_env(
            GATEWAY_LOG_LEVEL="warning", SANDBOX_TASK_SECONDS="86400", SANDBOX_QUEUE_SECONDS="86400"
        )
        command = [*cli_command(), "sandbox", "--host", HOST]
        sandbox = start_server("sandbox", command, sandbox_env, workdir, sandbox_port)
        servers.append(sandbox)
        wait_ready(sandbox, "/")
        progress(f"sandbox up; measuring {requests} requests per configuration in {rounds} rounds")
        results, phases, problems = run_async(
            run_http(plan, gateways, launcher, environment.server_url, sandbox.popen.pid, environment.pg["postmaster"])
        )
        notes += [f"{problem}." for problem in problems]
        sanity = [run_async(ledger_summary(g, environment.redis_url)) for g in gateways]
        sandbox.stop()

        micro = None
        if micro_url is not None:
            progress(f"timing the database work alone: {args.micro_iterations} calls of each")
            micro = run_async(run_micro(micro_url, environment.redis_url, args.micro_iterations))
    finally:
        for server in [*launcher.started, *servers]:
            server.stop()
        if not args.keep_databases:
            for url in [g.database_url for g in gateways] + ([micro_url] if micro_url else []):
                with contextlib.suppress(Exception):
                    drop_database(url)

    shutil.rmtree(workdir, ignore_errors=True)  # the servers' logs; kept when the run failed
    report = Report(plan, environment, configs, results, phases, micro, sanity, notes, pool_size)
    section = report.render(time.monotonic() - started)
    print(section)
    if args.out != "-":
        write_section(Path(args.out), SECTION, section, INTRO)
        progress(f"wrote {args.out}")
    errors = sum(sum(m.errors.values()) for m in results.values())
    if errors:
        progress(f"{errors} requests failed; see the errors column and the samples in the output")
        return 1
    return 0


def probe(database_url: str | None, redis_url: str | None) -> Environment:
    server_url = asyncpg_url(database_url or first_env(DATABASE_ENV) or DEFAULT_DATABASE_URL)
    pg = run_async(pg_server_info(server_url))
    wanted = redis_url or first_env(REDIS_ENV) or DEFAULT_REDIS_URL
    if wanted.lower() in ("", "none", "off"):
        return Environment(server_url, None, "disabled with --redis-url none", pg, None)
    version, reason = run_async(redis_version(wanted))
    if version is None:
        return Environment(server_url, None, f"{wanted}: {reason}", pg, None)
    return Environment(server_url, wanted, "", pg, version)


def first_env(names: Sequence[str]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


# --- report -----------------------------------------------------------------------------------------------------


def ms(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


@dataclass
class Report:
    plan: Plan
    environment: Environment
    configs: list[Config]
    results: dict[tuple[str, int], Measurement]
    phases: dict[int, Phase]
    micro: Micro | None
    sanity: list[str]
    notes: list[str]
    pool_size: int

    def render(self, elapsed: float) -> str:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        env = self.environment
        pg = env.pg
        redis_line = (
            f"Redis {env.redis_version} at {env.redis_url}"
            if env.redis_url
            else f"Redis not used ({env.redis_note}): its row is skipped"
        )
        lines = [
            f"## Submit latency, quotas off vs. on ({now})",
            "",
            f"- Command: `{command_line()}` (took {elapsed:.0f} s)",
            f"- Machine: {machine()}",
            f"- PostgreSQL {pg['server_version']} at {shown_url(env.server_url)} "
            f"(synchronous_commit={pg['synchronous_commit']}, fsync={pg['fsync']}); {redis_line}",
            f"- Software: {versions('fastapi', 'uvicorn', 'uvloop', 'sqlalchemy', 'asyncpg', 'redis', 'aiohttp')}",
            "- Setup: all on this machine: one sandbox upstream process; per configuration a fresh migrated "
            "database (set up with `migrate`, `tenants create`, `tenants limits`) and a single-worker "
            f"`seedream-gateway serve` (GATEWAY_DB_POOL_SIZE={self.pool_size}, GATEWAY_POLL_INTERVAL_S=0, "
            "log level warning); the load generator (aiohttp on uvloop, closed loop, one shared client); "
            f"{'PostgreSQL and Redis' if env.redis_url else 'PostgreSQL'}.",
            f"- Method: {self.plan.rounds} round{'s' if self.plan.rounds != 1 else ''}; in each, every "
            "configuration in turn (order rotated each round) "
            f"gets a freshly started gateway, {self.plan.warmup} discarded warm-up requests at "
            f"c={max(self.plan.concurrency)}, "
            "then per concurrency a short discarded run and one measured chunk; then its gateway is stopped (one "
            "gateway at a time, so only its pool is open on the server). Latency: POST sent to answer read, HTTP 200 "
            "only. Throughput: requests / time under load. CPU: user+system time of the gateway process and of all "
            "PostgreSQL processes (/proc) during the measured chunks, per request. DB connections: opened during the "
            "chunks (pg_stat_database.sessions) / most open after a chunk.",
            *[f"- Note: {note}" for note in self.notes],
            "",
        ]
        for concurrency in self.plan.concurrency:
            lines += self.concurrency_table(concurrency)
        if self.micro is not None and self.micro.times:
            lines += self.micro_table(self.micro)
        lines += ["### Sanity: what each gateway left in its ledger", ""]
        lines += [f"- {line}" for line in self.sanity]
        samples = [
            f"- {config.label}, c={c}: {sample}"
            for (key, c), m in self.results.items()
            for config in self.configs
            if config.key == key
            for sample in m.samples
        ]
        if samples:
            lines += ["", "### Error samples", "", *samples]
        return "\n".join(lines).rstrip() + "\n"

    def concurrency_table(self, concurrency: int) -> list[str]:
        lines = [
            f"### Concurrency {concurrency}",
            "",
            "| configuration | requests | errors | req/s | p50 ms | p90 ms | p99 ms | added p50 vs quotas off "
            "| p50 ratio | added p50 per round: median (min…max) | gateway CPU ms/req | gateway core busy "
            "| PostgreSQL CPU ms/req | backends waiting on a lock (mean) | DB connections opened / open |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        base = self.results[(BASELINE, concurrency)]
        base_p50 = base.stats()["p50"]
        added: dict[str, float] = {}
        rps: dict[str, float] = {}
        for config in self.configs:
            m = self.results[(config.key, concurrency)]
            s = m.stats()
            rps[config.key] = s["rps"]
            if config.key == BASELINE:
                delta, ratio, spread = "-", "1.00", "-"
            else:
                added[config.key] = s["p50"] - base_p50
                per_round = [(a - b) * 1000 for a, b in zip(m.round_p50, base.round_p50, strict=False)]
                delta = f"{ms(added[config.key], signed=True)} ms"
                ratio = f"{s['p50'] / base_p50:.2f}" if base_p50 else "-"
                spread = (
                    f"{ms(statistics.median(per_round), signed=True)} "
                    f"({ms(min(per_round), signed=True)}…{ms(max(per_round), signed=True)})"
                )
            pg_cpu = "n/a" if m.postgres_cpu is None else ms(m.postgres_cpu / m.requests * 1000)
            connections = f"{'n/a' if m.connections is None else m.connections} / {m.held}"
            lines.append(
                f"| {config.label} | {m.requests} | {sum(m.errors.values())} | {s['rps']:.0f} | {ms(s['p50'])} "
                f"| {ms(s['p90'])} | {ms(s['p99'])} | {delta} | {ratio} | {spread} "
                f"| {ms(m.gateway_cpu / m.requests * 1000)} | {m.gateway_cpu / m.wall:.0%} | {pg_cpu} "
                f"| {statistics.fmean(m.lock_waits):.1f} | {connections} |"
            )
        lines.append("")
        if QUOTAS_ON in added:
            verdict = "met" if added[QUOTAS_ON] < 1.0 else "NOT met"
            lines.append(
                f"- Goal “quotas add under 1 ms at p50”: **{verdict}** at c={concurrency} "
                f"({ms(added[QUOTAS_ON], signed=True)} ms, throughput {rps[QUOTAS_ON] / rps[BASELINE] - 1:+.0%})."
            )
        windows = [
            f"{label} {ms(added[key] - added[QUOTAS_ON], signed=True)} ms"
            for key, label in (("rate-pg", "PostgreSQL"), ("rate-redis", "Redis"))
            if key in added and QUOTAS_ON in added
        ]
        if windows:
            lines.append(f"- Rate windows on top of quotas (p50): {', '.join(windows)}.")
        saturated = [
            config.label
            for config in self.configs
            if (m := self.results[(config.key, concurrency)]).wall and m.gateway_cpu / m.wall > SATURATED
        ]
        if saturated:
            lines.append(
                f"- The gateway process was CPU-bound (one core, > {SATURATED:.0%} busy) in: {', '.join(saturated)}. "
                f"There, throughput ≈ 1 / (gateway CPU per request) and, in this closed loop, p50 ≈ {concurrency} / "
                f"throughput: each added millisecond of gateway CPU per request adds ~{concurrency} ms to the p50."
            )
        phase = self.phases.get(concurrency)
        if phase is not None and phase.machine is not None and phase.wall > 0:
            capacity = phase.wall * cores()
            lines.append(
                f"- Machine CPU during the measured chunks: {phase.machine / capacity:.0%} busy, of which "
                f"{max(phase.machine - phase.ours, 0.0) / capacity:.0%} by processes outside this benchmark."
            )
        lines.append("")
        return lines

    def micro_table(self, micro: Micro) -> list[str]:
        calls = len(next(iter(micro.times.values())))
        lines = [
            f"### Database work alone (in-process through the app's own code, concurrency 1, {calls} calls each)",
            "",
            "| operation | p50 ms | p90 ms | p99 ms | mean ms |",
            "|---|--:|--:|--:|--:|",
        ]
        p50: dict[str, float] = {}
        for key, values in micro.times.items():
            ordered = sorted(values)
            p50[key] = percentile(ordered, 0.5) * 1000
            lines.append(
                f"| {MICRO_LABELS[key]} | {ms(p50[key])} | {ms(percentile(ordered, 0.9) * 1000)} "
                f"| {ms(percentile(ordered, 0.99) * 1000)} | {ms(statistics.fmean(ordered) * 1000)} |"
            )
        lines.append("")
        if "reserve_tx" in p50 and "insert" in p50:
            lines.append(
                f"- Quotas add {ms(p50['reserve_tx'] - p50['insert'], signed=True)} ms to the admission statement "
                "at p50 (quotas on minus quotas off)."
            )
        if "checkout" in p50 and "checkout_noping" in p50:
            lines.append(
                f"- The pre-ping adds {ms(p50['checkout'] - p50['checkout_noping'], signed=True)} ms to every "
                "connection checkout at p50."
            )
        if "window_pg" in p50:
            redis_hit = f", in Redis {ms(p50['window_redis'])} ms" if "window_redis" in p50 else ""
            lines.append(f"- A rate-window hit costs {ms(p50['window_pg'])} ms in PostgreSQL{redis_hit} (p50).")
        lines.append("")
        return lines


# --- command line -----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Submit p50/p99 and throughput of the gateway with quotas off vs. on (and rate windows).",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="measured requests per configuration and concurrency (default: 500 at c=1, 2000 otherwise)",
    )
    parser.add_argument("--concurrency", default="1,32", help="comma-separated concurrency levels (default: 1,32)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL server to create the benchmark databases on (default: $BENCH_DATABASE_URL, "
        f"$GATEWAY_TEST_DATABASE_URL or {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help=f"Redis for the rate-window row (default: $BENCH_REDIS_URL, $GATEWAY_REDIS_URL or {DEFAULT_REDIS_URL}; "
        "'none' skips it)",
    )
    parser.add_argument(
        "--out",
        default=display_path(str(DEFAULT_OUT)),
        help="results file whose generated section is replaced (default: bench/RESULTS.md; '-': stdout only)",
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds; each starts every configuration's gateway once (default: 4)"
    )
    parser.add_argument(
        "--warmup", type=int, default=200, help="discarded warm-up requests per gateway start (default: 200)"
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=None,
        help="GATEWAY_DB_POOL_SIZE of the gateways (default: the highest concurrency, so that no request waits for "
        "a connection and no connection is opened mid-chunk)",
    )
    parser.add_argument(
        "--micro-iterations",
        type=int,
        default=1000,
        help="calls per operation of the in-process timing (default: 1000; 0: skip)",
    )
    parser.add_argument("--keep-databases", action="store_true", help="do not drop the benchmark databases")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_code("submit_quota", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
