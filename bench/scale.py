"""Scale and soak: status and submit on an empty ledger and on a bulk-filled one (10 million tasks over 10,000
tenants by default), then the resident memory of each `serve --workers 2` process over a 10-minute soak.

    .venv/bin/python bench/scale.py                                   # full size: see bench/README.md for the time
    .venv/bin/python bench/scale.py --tasks 200000 --tenants 1000 --soak-seconds 60   # a quick trial

See bench/README.md for what runs, the options and how to read the report. The report replaces the section between
`<!-- scale:begin -->` and `<!-- scale:end -->` in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from bulk_ledger import DAYS, FAILED_FRACTION, Generated, Shape, generate
from common import (
    DEFAULT_OUT,
    HOST,
    ROOT,
    BenchError,
    Server,
    all_processes,
    clean_env,
    cli_command,
    command_line,
    create_database,
    drop_database,
    exit_code,
    free_port,
    last_json,
    machine,
    plain_url,
    progress,
    shown_url,
    start_server,
    versions,
    wait_ready,
    write_section,
)
from hot_path import (
    DATABASE_ENV,
    DEFAULT_DATABASE_URL,
    LIMITS,
    LUA,
    SUBMIT_BODY,
    UPSTREAM_KEY,
    WRK_TIMEOUT,
    Measured,
    Setup,
    Target,
    calibrate,
    git_describe,
    measure,
    postgres_pid,
    sandbox_config,
    submit,
    supports_workers,
    wait_status,
    wrk_version,
)

SECTION = "scale"
STATUS_PATH = "/v1/images/generations/"
SUBMIT_PATH = "/v1/images/generations"
RSS_LIMIT_MB = 150.0
FLAT_GROWTH = 0.05  # "flat": the fitted line rises by less than this share over the soak's second half
OPEN_TASKS = 20  # open tasks of the bench tenant for the soak's mix
SOAK_MIX = (6, 2, 2)  # per 10 requests: status of a completed task, status of an open task, submit
WARM, COLD, SUBMIT = "status of a completed task", "status, cold cache", "submit"

# The cold-cache row: every request the status of the next task of a list (a different one each time).
COLD_LUA = """
local ids = {{}}
for line in io.lines({ids}) do ids[#ids + 1] = line end
local prefix = {prefix}
local at = 0
request = function()
  at = at % #ids + 1
  return wrk.format(nil, prefix .. ids[at])
end
"""

# The soak's mix, chosen by request number.
SOAK_LUA = """
local completed, open = {{}}, {{}}
for line in io.lines({completed}) do completed[#completed + 1] = line end
for line in io.lines({open}) do open[#open + 1] = line end
local prefix = {prefix}
local submit_path = {submit_path}
local submit_body = {submit_body}
local n, ci, oi = 0, 0, 0
request = function()
  n = n + 1
  local slot = n % 10
  if slot < {completed_slots} then
    ci = ci % #completed + 1
    return wrk.format("GET", prefix .. completed[ci])
  elseif slot < {status_slots} then
    oi = oi % #open + 1
    return wrk.format("GET", prefix .. open[oi])
  end
  return wrk.format("POST", submit_path, nil, submit_body)
end
"""


def lua_string(text: str) -> str:
    """A Lua string literal (JSON's escapes for ASCII text are Lua's too)."""
    return json.dumps(text, ensure_ascii=True)


@dataclass(frozen=True)
class IdListTarget(Target):
    """Status calls over a list of task ids, the next one for each request (from a file of one id per line)."""

    ids_file: Path = Path()

    def script(self, workdir: Path) -> Path:
        code = COLD_LUA.format(ids=lua_string(str(self.ids_file)), prefix=lua_string(STATUS_PATH))
        path = workdir / f"wrk-{self.ids_file.stem}.lua"
        path.write_text(LUA.format(method="GET", key=self.key, body=code))
        return path


@dataclass(frozen=True)
class MixTarget(Target):
    """The soak's mix: status of completed tasks (over many ids), of open tasks, and submits."""

    completed_file: Path = Path()
    open_file: Path = Path()

    def script(self, workdir: Path) -> Path:
        completed_slots, open_slots, _ = SOAK_MIX
        code = SOAK_LUA.format(
            completed=lua_string(str(self.completed_file)),
            open=lua_string(str(self.open_file)),
            prefix=lua_string(STATUS_PATH),
            submit_path=lua_string(SUBMIT_PATH),
            submit_body=lua_string(SUBMIT_BODY),
            completed_slots=completed_slots,
            status_slots=completed_slots + open_slots,
        )
        path = workdir / "wrk-soak.lua"
        path.write_text(LUA.format(method="GET", key=self.key, body=code))
        return path


# --- the ledgers ------------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    name: str  # "empty", "full"
    setup: Setup
    tenant_id: str = ""
    made: Generated = field(default_factory=Generated)
    tasks_at_end: int = 0
    quota_check: str = ""


async def connect(url: str) -> Any:
    return await asyncpg.connect(plain_url(url), timeout=10, command_timeout=None)


async def bench_completed_ids(url: str, tenant_id: str) -> list[str]:
    conn = await connect(url)
    try:
        rows = await conn.fetch(
            "SELECT id FROM tasks WHERE tenant_id = $1 AND status = 'completed' ORDER BY id", tenant_id
        )
        return [r["id"] for r in rows]
    finally:
        await conn.close()


async def count_of(url: str, sql: str, *params: Any) -> int:
    conn = await connect(url)
    try:
        return int(await conn.fetchval(sql, *params))
    finally:
        await conn.close()


async def server_facts(url: str) -> str:
    conn = await connect(url)
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = [
            f"{name}={await conn.fetchval(f'SHOW {name}')}"
            for name in ("shared_buffers", "effective_cache_size", "synchronous_commit", "autovacuum")
        ]
        return f"PostgreSQL {version} ({', '.join(settings)})"
    finally:
        await conn.close()


def fill(ledger: Ledger, shape: Shape, chunk: int, *, bench_only: bool) -> None:
    def report(line: str) -> None:
        progress(f"{ledger.name}: {line.strip()}")

    url = ledger.setup.database_url
    ledger.made = asyncio.run(generate(url, ledger.tenant_id, shape, chunk, bench_only=bench_only, report=report))


def make_ledger(name: str, setup: Setup) -> Ledger:
    """Migrate, create the bench tenant through the CLI (so its key works) and give it limits no run reaches."""
    progress(f"{name} ledger: migrate, tenant, limits")
    setup.cli("migrate")
    created = last_json(setup.cli("tenants", "create", "bench", "--json"))
    setup.tenant_key = created["key"]
    setup.cli("tenants", "limits", "bench", *LIMITS)
    return Ledger(name, setup, tenant_id=created["tenant_id"])


def check_quota(ledger: Ledger) -> None:
    """`quota check --tenant bench` once the gateways are stopped: the bench tenant's books balance."""
    try:
        report = last_json(ledger.setup.cli("quota", "check", "--tenant", "bench"))
        ledger.quota_check = "balanced" if report.get("ok") else json.dumps(report)[:300]
    except BenchError as e:
        ledger.quota_check = f"drift or error: {str(e)[:300]}"


# --- measuring --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdList:
    path: Path
    count: int


@dataclass(frozen=True)
class IdLists:
    warm: str  # the completed task of the warm row
    cold_warmup: IdList  # the cold rows' warm-ups
    cold: dict[int, IdList]  # the cold row's measured ids, per concurrency: no id shared between rows
    all_completed: IdList  # the soak's


def id_lists(ids: list[str], concurrencies: Sequence[int], workdir: Path) -> IdLists:
    """The bench tenant's completed tasks, shuffled: one for the warm row, a fifth to warm up the cold rows, then
    a fifth for the c=1 cold row and the rest for the other (no id twice in a gateway's life unless a run outlasts
    its list)."""
    if len(ids) < 100:
        raise BenchError(f"the bench tenant has only {len(ids)} completed tasks")
    shuffled = list(ids)
    random.Random(7).shuffle(shuffled)
    warm, rest = shuffled[0], shuffled[1:]
    fifth = len(rest) // 5
    small = [c for c in concurrencies if c == 1]
    parts: dict[str, list[str]] = {"cold-warmup": rest[:fifth]}
    if len(concurrencies) == 1:
        parts[f"cold-c{concurrencies[0]}"] = rest[fifth:]
    else:
        others = [c for c in concurrencies if c != 1]
        at = fifth
        if small:
            parts["cold-c1"] = rest[at : at + fifth]
            at += fifth
        share = (len(rest) - at) // len(others)
        for n, c in enumerate(others):
            parts[f"cold-c{c}"] = rest[at + n * share : at + (n + 1) * share]
    parts["completed"] = shuffled

    def write(name: str) -> IdList:
        path = workdir / f"ids-{name}.txt"
        path.write_text("\n".join(parts[name]) + "\n")
        return IdList(path, len(parts[name]))

    return IdLists(warm, write("cold-warmup"), {c: write(f"cold-c{c}") for c in concurrencies}, write("completed"))


def plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """The rows of a ledger, in the order they run: (operation, concurrency)."""
    return [(WARM, args.concurrency), *((COLD, c) for c in cold_concurrencies(args)), (SUBMIT, args.concurrency)]


def cold_concurrencies(args: argparse.Namespace) -> list[int]:
    return sorted({args.concurrency, 1}, reverse=True) if args.cold_c1 else [args.concurrency]


def measure_ledger(
    ledger: Ledger,
    lists: IdLists,
    round_no: int,
    args: argparse.Namespace,
    workdir: Path,
    postgres: int | None,
) -> list[Measured]:
    """Every row of the plan on a freshly started gateway (so its in-memory caches start empty), then it is
    stopped."""
    setup = ledger.setup
    gateway = setup.serve(f"serve-{ledger.name}-r{round_no}", args.workers)
    families: dict[str, list[int]] = {"gateway": [gateway.popen.pid]}
    if postgres is not None:
        families["postgres"] = [postgres]
    base = gateway.url + SUBMIT_PATH
    key = setup.tenant_key
    side = f"{ledger.name} r{round_no}"
    cold_warmup = IdListTarget(COLD, "GET", base, key, ids_file=lists.cold_warmup.path)
    measured = []
    try:
        for operation, c in plan(args):
            target: Target
            if operation == WARM:
                target = warmup = Target(WARM, "GET", f"{base}/{lists.warm}", key)
            elif operation == COLD:
                target, warmup = IdListTarget(COLD, "GET", base, key, ids_file=lists.cold[c].path), cold_warmup
            else:
                target = warmup = Target(SUBMIT, "POST", base, key, SUBMIT_BODY)
            measured.append(measure(target, side, c, args, workdir, families, warmup=warmup, label_width=9))
        return measured
    finally:
        gateway.stop()


# --- the soak ---------------------------------------------------------------------------------------------------


def vm_rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def worker_pids(supervisor: int) -> list[int]:
    """The serve process's worker processes: its children, less multiprocessing's resource tracker."""
    table = all_processes()
    return sorted(
        pid for pid, (parent, _, _) in table.items() if parent == supervisor and "resource_tracker" not in cmdline(pid)
    )


@dataclass
class Soak:
    workers: int
    concurrency: int
    seconds: float
    interval: float
    supervisor: int
    samples: list[tuple[float, dict[int, float]]] = field(default_factory=list)  # (t, {pid: MB}); -1 = supervisor
    result: dict[str, Any] = field(default_factory=dict)
    open_ids: int = 0
    note: str = ""

    def pids(self) -> list[int]:
        seen: list[int] = []
        for _, values in self.samples:
            seen += [pid for pid in values if pid >= 0 and pid not in seen]
        return seen

    def series(self, pid: int) -> list[tuple[float, float]]:
        return [(t, values[pid]) for t, values in self.samples if pid in values]


@dataclass(frozen=True)
class WorkerVerdict:
    pid: int
    start: float
    end: float
    peak: float
    slope: float | None  # MB per minute over the second half
    growth: float | None  # the fitted line's rise over the second half, as a share of its start

    @property
    def under_limit(self) -> bool:
        return self.peak < RSS_LIMIT_MB

    @property
    def flat(self) -> bool | None:
        return None if self.growth is None else self.growth < FLAT_GROWTH


def least_squares(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """(slope, intercept) of the least-squares line through points; None for fewer than 3 or no spread in x."""
    if len(points) < 3:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return slope, my - slope * mx


def verdict(soak: Soak, pid: int) -> WorkerVerdict:
    series = soak.series(pid)
    values = [mb for _, mb in series]
    half = [(t, mb) for t, mb in series if t >= soak.seconds / 2]
    fit = least_squares(half)
    slope = growth = None
    if fit is not None:
        per_second, intercept = fit
        first, last = half[0][0], half[-1][0]
        at_first = intercept + per_second * first
        slope = per_second * 60
        growth = per_second * (last - first) / at_first if at_first > 0 else None
    return WorkerVerdict(pid, values[0], values[-1], max(values), slope, growth)


def make_open_tasks(setup: Setup, gateway: Server, count: int) -> list[str]:
    """Open tasks of the bench tenant that stay open for the whole soak (the sandbox holds them for a day)."""
    with httpx.Client(timeout=30, trust_env=False) as client:
        sandbox_config(setup, task_seconds=86400.0)
        try:
            ids = [submit(client, gateway.url, setup.tenant_key)["id"] for _ in range(count)]
        finally:
            sandbox_config(setup, task_seconds=3.0)
        for task_id in ids[:1]:
            wait_status(client, gateway.url, setup.tenant_key, task_id, "in_progress")
    return ids


def soak(ledger: Ledger, lists: IdLists, args: argparse.Namespace, workdir: Path) -> Soak:
    setup = ledger.setup
    workers = args.soak_workers if supports_workers(setup) else 1
    gateway = setup.serve(f"serve-soak-w{workers}", workers)
    try:
        found = worker_pids(gateway.popen.pid)
        deadline = time.monotonic() + 30
        while workers > 1 and len(found) < workers and time.monotonic() < deadline:
            time.sleep(0.5)
            found = worker_pids(gateway.popen.pid)
        open_ids = make_open_tasks(setup, gateway, OPEN_TASKS)
        open_file = workdir / "ids-open.txt"
        open_file.write_text("\n".join(open_ids) + "\n")
        target = MixTarget(
            "soak mix",
            "GET",
            gateway.url + SUBMIT_PATH,
            setup.tenant_key,
            completed_file=lists.all_completed.path,
            open_file=open_file,
        )
        result = Soak(workers, args.soak_concurrency, args.soak_seconds, args.soak_interval, gateway.popen.pid)
        result.open_ids = len(open_ids)
        if workers == 1:
            result.note = "this checkout's `serve` has no --workers: the one process is the worker"
        command = [
            "wrk",
            "-t1",
            f"-c{args.soak_concurrency}",
            f"-d{args.soak_seconds:g}s",
            f"--timeout={WRK_TIMEOUT}",
            "-s",
            str(target.script(workdir)),
            target.url,
        ]
        progress(
            f"soak: serve --workers {workers}, wrk c={args.soak_concurrency} for {args.soak_seconds:g} s, "
            f"RSS every {args.soak_interval:g} s"
        )
        started = time.monotonic()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as load:
            next_at = 0.0
            while True:
                now = time.monotonic() - started
                if now >= next_at or load.poll() is not None:
                    result.samples.append((now, rss_sample(gateway.popen.pid, workers)))
                    if len(result.samples) % 6 == 1:
                        sample = result.samples[-1][1]
                        shown = ", ".join(f"{pid}: {mb:.1f} MB" for pid, mb in sample.items() if pid >= 0)
                        progress(f"  soak t={now:5.0f} s  {shown}")
                    next_at += args.soak_interval
                if load.poll() is not None:
                    break
                time.sleep(min(0.5, max(0.0, next_at - (time.monotonic() - started))))
            stdout, stderr = load.communicate()
        for line in stdout.splitlines():
            if line.startswith("WRK_RESULT "):
                result.result = json.loads(line.removeprefix("WRK_RESULT "))
        if not result.result:
            raise BenchError(f"wrk gave no result for the soak ({load.returncode}):\n{stdout}\n{stderr}")
        return result
    finally:
        gateway.stop()


def rss_sample(supervisor: int, workers: int) -> dict[int, float]:
    values: dict[int, float] = {}
    pids = worker_pids(supervisor) if workers > 1 else [supervisor]
    for pid in pids:
        mb = vm_rss_mb(pid)
        if mb is not None:
            values[pid] = mb
    if workers > 1 and (mb := vm_rss_mb(supervisor)) is not None:
        values[-1] = mb
    return values


# --- the run ----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (Debian: apt-get install wrk)")
    if args.tenants < 2:
        raise BenchError("--tenants must be at least 2 (the bench tenant and others)")
    k = args.tasks // args.cold_ids
    if k < 2:
        raise BenchError(f"--tasks must be at least twice --cold-ids ({args.cold_ids:,}): the bench tenant's share")
    shape = Shape(args.tasks, args.tenants, k, round(args.tasks * args.open_fraction), time.time())
    server_url = args.database_url
    started = time.monotonic()
    calibration = calibrate()
    facts = asyncio.run(server_facts(server_url))
    workdir = Path(tempfile.mkdtemp(prefix="gw-scale-"))
    progress(f"work directory (logs, wrk scripts): {workdir}")
    databases: list[str] = []
    sandbox: Server | None = None
    ledgers: list[Ledger] = []
    rows: list[tuple[int, str, Measured]] = []  # (round, ledger, measured)
    soaked: Soak | None = None
    lists: IdLists | None = None
    try:
        sandbox_env = clean_env(SANDBOX_TASK_SECONDS="3", GATEWAY_LOG_LEVEL="warning")
        sandbox = start_server(
            "sandbox", [*cli_command(), "sandbox", "--host", HOST], sandbox_env, workdir, free_port()
        )
        wait_ready(sandbox, "/")
        env = {
            "GATEWAY_UPSTREAM_BASE_URL": sandbox.url,
            "GATEWAY_UPSTREAM_KEYS": UPSTREAM_KEY,
            "GATEWAY_ADMIN_TOKEN": "adm-bench-scale-0123456789abcdef",
            "GATEWAY_SECRET_KEY": "scale-bench-secret-0123456789abcdef0123456789",
        }
        for name in ("empty", "full"):
            databases.append(create_database(server_url, f"gw_bench_scale_{name}"))
            ledgers.append(make_ledger(name, Setup(workdir, ROOT, databases[-1], sandbox, env)))
        empty, full = ledgers
        progress(f"empty ledger: the bench tenant's {shape.bench_tasks:,} completed tasks")
        fill(empty, shape, args.chunk, bench_only=True)
        progress(
            f"full ledger: {shape.total:,} tasks over {shape.tenants:,} tenants (1 in {shape.k} the bench tenant's)"
        )
        fill(full, shape, args.chunk, bench_only=False)
        ids = asyncio.run(bench_completed_ids(empty.setup.database_url, empty.tenant_id))
        in_full = asyncio.run(
            count_of(
                full.setup.database_url,
                "SELECT count(*) FROM tasks WHERE tenant_id = $1 AND status = 'completed' AND id = ANY($2::text[])",
                full.tenant_id,
                ids,
            )
        )
        if in_full != len(ids):
            raise BenchError(f"the full ledger holds {in_full:,} of the empty one's {len(ids):,} bench tasks")
        lists = id_lists(ids, cold_concurrencies(args), workdir)
        postgres = postgres_pid(server_url)
        for round_no in range(1, args.rounds + 1):
            order = ledgers if round_no % 2 else ledgers[::-1]
            for ledger in order:
                progress(f"round {round_no}/{args.rounds}: {ledger.name} ledger, serve --workers {args.workers}")
                for measured in measure_ledger(ledger, lists, round_no, args, workdir, postgres):
                    rows.append((round_no, ledger.name, measured))
        if args.soak_seconds > 0:
            soaked = soak(full, lists, args, workdir)
        for ledger in ledgers:
            check_quota(ledger)
            ledger.tasks_at_end = asyncio.run(count_of(ledger.setup.database_url, "SELECT count(*) FROM tasks"))
    finally:
        for ledger in ledgers:
            for server in ledger.setup.servers:
                server.stop()
        if sandbox is not None:
            sandbox.stop()
        if args.keep:
            progress(f"kept: {', '.join(shown_url(u) for u in databases)} and {workdir}")
        else:
            for url in databases:
                with contextlib.suppress(Exception):
                    drop_database(url)
    elapsed = time.monotonic() - started
    assert lists is not None
    report = render(args, shape, ledgers, rows, soaked, lists, calibration, facts, elapsed)
    print(report)
    if args.out != "-":
        write_section(Path(args.out), SECTION, report, "# Benchmark results\n")
        progress(f"wrote the {SECTION} section of {args.out}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    errors = sum(m.errors for _, _, m in rows) + (soak_errors(soaked) if soaked else 0)
    return 1 if errors else 0


def soak_errors(soaked: Soak) -> int:
    return int(soaked.result.get("non2xx", 0)) + int(soaked.result.get("socket_errors", 0))


# --- report -----------------------------------------------------------------------------------------------------


def mib(n: float) -> str:
    if n >= 1024**3:
        return f"{n / 1024**3:.2f} GiB"
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


def duration(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def render(
    args: argparse.Namespace,
    shape: Shape,
    ledgers: list[Ledger],
    rows: list[tuple[int, str, Measured]],
    soaked: Soak | None,
    lists: IdLists,
    calibration: float,
    facts: str,
    elapsed: float,
) -> str:
    full = ledgers[-1]
    lines = [
        f"## Scale and soak: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- Command: `{command_line()}` (took {duration(elapsed)})",
        f"- Gateway: {git_describe(ROOT)}",
        f"- Machine: {machine()}; CPU calibration: a fixed Python loop took {calibration:.1f} ms (lower is faster)",
        f"- Software: wrk {wrk_version()}, {facts} at {shown_url(args.database_url)}, "
        + versions("fastapi", "uvicorn", "sqlalchemy", "asyncpg", "httpx", "pydantic"),
        f"- Rows: {args.rounds} round(s); in each, each ledger (order alternating) gets a freshly started "
        f"`serve --workers {args.workers}` (default settings: log level info, background polling on; the sandbox "
        f"as upstream), then per row {args.warmup:g} s of warm-up and {args.duration:g} s measured by "
        "`wrk -t1 -c<c>`; the gateway is stopped after its rows. All on the same cores.",
        "",
        "### The ledgers",
        "",
        f"Generated by bench/bulk_ledger.py with SQL (`INSERT ... SELECT ... FROM generate_series`) straight into "
        f"the migrated schema (foreign-key triggers off during the load), then `VACUUM (ANALYZE)` and `CHECKPOINT`. "
        f"Tasks over the last {DAYS} days in created_at order, ids minted from created_at as the app mints them. The "
        f"bench tenant (made by `tenants create`, its key used by wrk) owns 1 task in {shape.k} "
        f"({shape.bench_tasks:,}, all completed), the same rows in both ledgers; the empty ledger is the bench tenant "
        f"alone. The other tenants' tasks are spread with a skew (tenant index = others x u², u uniform, so the first "
        f"tenants are large); {FAILED_FRACTION:.0%} failed, the newest {shape.open_count:,} open (queued or in "
        "progress), the rest completed; n = 1 (80 %), 2 or 4. Per task a `reserve` quota entry and, once terminal, a "
        "`settle` one; the day, month and in-flight counters summed from the entries. One tenant in ten has a webhook "
        "and one delivered webhook delivery per terminal task. A key and a `tenant.create` audit row per tenant. Open "
        "tasks look refreshed and due 30 days ahead, so the poller (or reconciler) does not ask the sandbox about "
        "upstream ids it never issued; its queries still have to skip past them.",
        "",
        "| ledger | tenants | tasks generated | tasks at the end | database size | generation, total "
        "| generation, by step | bench quota check |",
        "|---|--:|--:|--:|--:|--:|---|---|",
    ]
    for ledger in ledgers:
        made = ledger.made
        size = sum(int(s["total"]) for s in made.sizes)
        steps = ", ".join(f"{name} {duration(s)}" for name, s in made.timings.items())
        lines.append(
            f"| {ledger.name} | {made.tenants:,} | {made.tasks:,} | {ledger.tasks_at_end:,} | {mib(size)} | "
            f"{duration(sum(made.timings.values()))} | {steps} | {ledger.quota_check or '-'} |"
        )
    lines += [
        "",
        "Sizes of the full ledger after generation (`pg_relation_size`, `pg_indexes_size`, "
        "`pg_total_relation_size`; TOAST = total - heap - indexes):",
        "",
        "| table | rows | heap | TOAST | indexes | total |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for s in full.made.sizes:
        toast = int(s["total"]) - int(s["heap"]) - int(s["indexes"])
        lines.append(
            f"| {s['name']} | {int(s['rows']):,} | {mib(s['heap'])} | {mib(toast)} | {mib(s['indexes'])} | "
            f"{mib(s['total'])} |"
        )
    index_cells = [f"{s['name']} {mib(s['size'])}" for s in full.made.index_sizes if int(s["size"]) >= 1024**2]
    lines += ["", "Indexes of 1 MiB or more: " + (", ".join(index_cells) or "none") + ".", ""]
    if full.made.defaulted:
        lines += [f"Columns the generator leaves to their defaults: {', '.join(full.made.defaulted)}.", ""]
    lines += render_rows(args, rows, lists)
    if soaked is not None:
        lines += render_soak(soaked)
    return "\n".join(lines) + "\n"


def render_rows(args: argparse.Namespace, rows: list[tuple[int, str, Measured]], lists: IdLists) -> list[str]:
    def of(ledger: str, row: str, c: int) -> list[Measured]:
        return [m for _, name, m in rows if name == ledger and m.row == row and m.concurrency == c]

    def med(values: Sequence[float]) -> float:
        return statistics.median(values) if values else math.nan

    cold = ", ".join(f"{lists.cold[c].count:,} for c={c}" for c in cold_concurrencies(args))
    lines = [
        "### Status and submit: empty vs full ledger",
        "",
        "Medians over the rounds, and each round's p99. Cold cache: each request the status of another completed task "
        f"of the bench tenant, from a shuffled list of ids ({cold}; the warm-ups on {lists.cold_warmup.count:,} "
        "others), so the gateway's in-memory answers (10,000 per process) do not hide the database. CPU per request: "
        "the gateway process, and all of PostgreSQL's processes.",
        "",
        "| operation | c | ledger | req/s | p50 ms | p99 ms | p99 per round | errors | gateway CPU ms/req "
        "| PostgreSQL CPU ms/req |",
        "|---|--:|---|--:|--:|--:|---|--:|--:|--:|",
    ]
    verdicts: list[str] = []
    notes: list[str] = []
    for row, c in plan(args):
        p99s: dict[str, float] = {}
        for ledger in ("empty", "full"):
            measured = of(ledger, row, c)
            if not measured:
                continue
            p99s[ledger] = med([m.p99_ms for m in measured])
            cpu_gw = [v for m in measured if (v := m.cpu_ms_per_request("gateway")) is not None]
            cpu_pg = [v for m in measured if (v := m.cpu_ms_per_request("postgres")) is not None]
            lines.append(
                f"| {row} | {c} | {ledger} | {med([m.rps for m in measured]):,.0f} | "
                f"{med([m.p50_ms for m in measured]):.2f} | {p99s[ledger]:.2f} | "
                f"{', '.join(f'{m.p99_ms:.1f}' for m in measured)} | {sum(m.errors for m in measured)} | "
                f"{med(cpu_gw):.2f} | {med(cpu_pg):.2f} |"
            )
            if row == COLD and max(m.requests for m in measured) > lists.cold[c].count:
                notes.append(
                    f"- Note: a cold-cache run (c={c}, {ledger}) sent more requests than its list has ids: its "
                    "last ones may have been answered from memory."
                )
        if "empty" in p99s and "full" in p99s and p99s["empty"] > 0:
            ratio = p99s["full"] / p99s["empty"]
            verdicts.append(
                f"- **{row}, c={c}**: p99 full/empty = {p99s['full']:.2f} / {p99s['empty']:.2f} ms = "
                f"**{ratio:.2f}x** ({'PASS' if ratio <= 1.5 else 'FAIL'} against 1.5x)",
            )
    return [*lines, "", *verdicts, *notes, ""]


def render_soak(soaked: Soak) -> list[str]:
    r = soaked.result
    seconds = r.get("duration_us", 0) / 1e6
    rps = r.get("requests", 0) / seconds if seconds else 0.0
    completed, opened, submits = SOAK_MIX
    lines = [
        f"### Soak: resident memory per worker over {duration(soaked.seconds)}",
        "",
        f"`serve --workers {soaked.workers}` on the full ledger; `wrk -t1 -c{soaked.concurrency}` with a mix chosen by "
        f"request number: per 10 requests {completed} status of a completed task (cycling over all the bench "
        f"tenant's completed tasks, more than the cache holds), {opened} status of an open task ({soaked.open_ids} "
        f"held open by the sandbox, refreshed from it at most once a second), {submits} submits (3 s tasks, settled "
        f"by the poller). VmRSS of every worker (children of the serve process) from /proc every "
        f"{soaked.interval:g} s. Flat: the least-squares line over the second half rises by less than "
        f"{FLAT_GROWTH:.0%} of its value at the half's start.",
        "",
        f"wrk: {r.get('requests', 0):,} requests, {rps:,.0f} req/s, p50 {r.get('p50_us', 0) / 1000:.2f} ms, "
        f"p99 {r.get('p99_us', 0) / 1000:.2f} ms, errors {soak_errors(soaked)}.",
        "",
    ]
    if soaked.note:
        lines += [f"Note: {soaked.note}.", ""]
    if soaked.seconds < 600:
        lines += [
            f"Note: {duration(soaked.seconds)} is shorter than the goal's 10 minutes; the flatness verdict judges "
            "only this run's second half.",
            "",
        ]
    lines += [
        "| worker pid | start MB | end MB | max MB | slope, 2nd half (MB/min) | growth, 2nd half | < 150 MB | flat |",
        "|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    verdicts = [verdict(soaked, pid) for pid in soaked.pids()]
    for v in verdicts:
        slope = f"{v.slope:+.2f}" if v.slope is not None else "-"
        growth = f"{v.growth:+.1%}" if v.growth is not None else "-"
        flat = "-" if v.flat is None else ("yes" if v.flat else "no")
        lines.append(
            f"| {v.pid} | {v.start:.1f} | {v.end:.1f} | {v.peak:.1f} | {slope} | {growth} | "
            f"{'yes' if v.under_limit else 'no'} | {flat} |"
        )
    pids = soaked.pids()
    with_supervisor = any(-1 in values for _, values in soaked.samples)
    header = ["t (s)", *(f"worker {pid}" for pid in pids), *(["supervisor"] if with_supervisor else [])]
    lines += ["", "Samples (MB):", "", "| " + " | ".join(header) + " |", "|" + "--:|" * len(header)]
    for t, values in thin(soaked.samples, 13):
        cells = [f"{t:.0f}", *(f"{values[pid]:.1f}" if pid in values else "-" for pid in pids)]
        if with_supervisor:
            cells.append(f"{values[-1]:.1f}" if -1 in values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    replaced = len(pids) > soaked.workers
    under = all(v.under_limit for v in verdicts)
    flats = [v.flat for v in verdicts]
    passed = bool(verdicts) and under and all(f is True for f in flats) and not replaced
    reason = []
    if not under:
        reason.append(f"a worker reached {RSS_LIMIT_MB:.0f} MB")
    if any(f is False for f in flats):
        reason.append("a worker kept growing over the second half")
    if any(f is None for f in flats):
        reason.append("too few samples in the second half to judge flatness")
    if replaced:
        reason.append(f"{len(pids)} worker pids for {soaked.workers} workers: a worker was replaced")
    lines += [
        "",
        f"- **Soak**: max RSS per worker {', '.join(f'{v.peak:.1f}' for v in verdicts)} MB; "
        f"**{'PASS' if passed else 'FAIL'}** (under {RSS_LIMIT_MB:.0f} MB and flat)"
        + (f": {'; '.join(reason)}" if reason else ""),
        "",
    ]
    return lines


def thin(samples: list[tuple[float, dict[int, float]]], at_most: int) -> list[tuple[float, dict[int, float]]]:
    """At most `at_most` samples, evenly spread, the first and the last included."""
    if len(samples) <= at_most:
        return samples
    picks = sorted({round(i * (len(samples) - 1) / (at_most - 1)) for i in range(at_most)})
    return [samples[i] for i in picks]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=next((os.environ[n] for n in DATABASE_ENV if os.environ.get(n)), DEFAULT_DATABASE_URL),
        help="PostgreSQL server; the run creates and drops its own two databases there",
    )
    parser.add_argument("--tasks", type=int, default=10_000_000, help="tasks in the full ledger (default 10,000,000)")
    parser.add_argument("--tenants", type=int, default=10_000, help="tenants in the full ledger (default 10,000)")
    parser.add_argument(
        "--cold-ids", type=int, default=50_000, help="completed tasks of the bench tenant (default 50,000)"
    )
    parser.add_argument(
        "--open-fraction", type=float, default=0.001, help="share of open tasks in the full ledger (default 0.001)"
    )
    parser.add_argument("--chunk", type=int, default=250_000, help="tasks per INSERT statement (default 250,000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of empty + full rows (default 5)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per row (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per row (default 2)")
    parser.add_argument("--concurrency", type=int, default=16, help="wrk connections for the rows (default 16)")
    parser.add_argument("--workers", type=int, default=1, help="gateway workers for the rows (default 1)")
    parser.add_argument(
        "--cold-c1",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the cold-cache status at c=1: the lookup without queueing (default on)",
    )
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="soak length, 0 = no soak (default 600)")
    parser.add_argument("--soak-workers", type=int, default=2, help="gateway workers in the soak (default 2)")
    parser.add_argument("--soak-concurrency", type=int, default=16, help="wrk connections in the soak (default 16)")
    parser.add_argument("--soak-interval", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results file (its scale section), or - for stdout")
    parser.add_argument("--keep", action="store_true", help="keep both databases and the work directory")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_code("scale", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
