"""What open tasks cost: the background poller's upstream calls and gateway CPU per open task, and what a thousand
open tasks take from the submit path (issue 8: "state its cost per open task and keep a thousand open tasks from
stealing the submit path's capacity").

Two ledgers on the same PostgreSQL server and the same sandbox upstream, each made the way ops would (`migrate`,
`tenants create`, `tenants limits`): `none` has no open task, `open` has `--open` tasks that the sandbox holds open
for a day (they stay open for the whole run; the poller keeps looking at them). Round after round (the order
reversed every other round), each ledger gets a freshly started `serve` (one worker, default settings: log level info,
background polling on), and:

1. `--settle-in` seconds (15) for the poller to reach its steady state (its first look at a task comes 5 s after the
   create, then every 5-10 s, paced to the key's query budget);
2. `--idle` seconds (20) with no request: the gateway's CPU and its status calls to the upstream (its own
   `gateway_upstream_calls_total{operation="get"}` from `/metrics`) - the cost of the open tasks alone;
3. the submit row: `--warmup` s (2) then `--duration` s (10) of `wrk -t1 -c<concurrency>` submitting 3 s tasks;
4. until the tasks the row made have ended (the poller settles them), so the next gateway starts from the same
   ledger.

Report: per ledger, medians over the rounds; the open ledger's looks per open task per minute and gateway CPU per
look and per open task; and the submit throughput with the open tasks over without (the goal: they do not take the
submit path's capacity).

    .venv/bin/python bench/poller_cost.py [--open 1000] [--rounds 2] [--out -]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from common import (
    DEFAULT_OUT,
    BenchError,
    Server,
    command_line,
    create_database,
    drop_database,
    exit_code,
    last_json,
    machine,
    plain_url,
    progress,
    shown_url,
    versions,
)
from hot_path import (
    LIMITS,
    SUBMIT_BODY,
    Measured,
    Setup,
    Target,
    add_database_url,
    calibrate,
    cpu_of,
    git_describe,
    measure,
    postgres_pid,
    sandbox_config,
    start_sandbox,
    submit,
    upstream_env,
    wrk_version,
)

LEDGERS = ("none", "open")
SETTLE_TIMEOUT_S = 300.0


@dataclass
class Ledger:
    name: str
    database_url: str
    tenant_key: str = ""
    held_open: int = 0  # tasks the sandbox holds open for the whole run


@dataclass
class Round:
    ledger: str
    round: int
    idle_seconds: float = 0.0
    idle_cpu_s: float = 0.0  # the gateway's CPU over the idle window
    idle_looks: float = 0.0  # its status calls to the upstream over the idle window
    idle_pg_cpu_s: float = 0.0
    submit: Measured | None = None
    settled_s: float = -1.0
    extra: dict[str, Any] = field(default_factory=dict)


# --- the ledgers --------------------------------------------------------------------------------------------------


def prepare(setup: Setup, ledger: Ledger, open_tasks: int) -> None:
    """Migrate, the bench tenant and its limits; in the open ledger, `open_tasks` tasks held open by the sandbox."""
    setup.cli("migrate", database_url=ledger.database_url)
    ledger.tenant_key = last_json(setup.cli("tenants", "create", "bench", "--json", database_url=ledger.database_url))[
        "key"
    ]
    setup.cli("tenants", "limits", "bench", *LIMITS, database_url=ledger.database_url)
    if not open_tasks:
        return
    gateway = setup.serve(f"serve-{ledger.name}-setup", 1, database_url=ledger.database_url)
    try:
        sandbox_config(setup, task_seconds=86400.0, queue_seconds=0.0)
        with httpx.Client(timeout=30, trust_env=False) as client, ThreadPoolExecutor(8) as pool:
            made = list(pool.map(lambda _: submit(client, gateway.url, ledger.tenant_key)["id"], range(open_tasks)))
        ledger.held_open = len(set(made))
        progress(f"{ledger.name}: {ledger.held_open:,} tasks held open by the sandbox")
    finally:
        sandbox_config(setup, task_seconds=3.0, queue_seconds=0.5)  # the sandbox's defaults, for the submit rows
        gateway.stop()


async def open_count(database_url: str) -> int:
    conn = await asyncpg.connect(plain_url(database_url), timeout=5)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM tasks WHERE status NOT IN ('completed', 'failed')"))
    finally:
        await conn.close()


async def settle(ledger: Ledger, timeout_s: float) -> float:
    """Seconds until the ledger's open tasks are the held ones again; -1 after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await open_count(ledger.database_url) <= ledger.held_open:
            return time.monotonic() - started
        await asyncio.sleep(1.0)
    return -1.0


def upstream_looks(gateway: Server) -> float:
    """The gateway's status calls to the upstream so far, from its own /metrics (open on loopback)."""
    response = httpx.get(f"{gateway.url}/metrics", timeout=10, trust_env=False)
    if response.status_code != 200:
        raise BenchError(f"/metrics answered {response.status_code}: {response.text[:300]}")
    total = 0.0
    for line in response.text.splitlines():
        if line.startswith("gateway_upstream_calls_total{") and 'operation="get"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- the run ------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (Debian: apt-get install wrk)")
    started = time.monotonic()
    calibration = calibrate()
    workdir = Path(tempfile.mkdtemp(prefix="gw-poller-cost-"))
    ledgers = [Ledger(name, create_database(args.database_url, f"gw_bench_poller_{name}")) for name in LEDGERS]
    sandbox: Server | None = None
    setup: Setup | None = None
    rounds: list[Round] = []
    try:
        sandbox = start_sandbox(workdir)
        env = upstream_env(sandbox)
        setup = Setup(workdir, Path(__file__).resolve().parents[1], ledgers[0].database_url, sandbox, env)
        for ledger in ledgers:
            progress(f"{ledger.name} ledger: migrate, tenant, limits")
            prepare(setup, ledger, args.open if ledger.name == "open" else 0)
        postgres = postgres_pid(args.database_url)
        for round_no in range(1, args.rounds + 1):
            for ledger in ledgers if round_no % 2 else ledgers[::-1]:
                rounds.append(one_round(setup, ledger, round_no, args, workdir, postgres))
    finally:
        for server in [*(setup.servers if setup else []), sandbox]:
            if server is not None:
                server.stop()
        if not args.keep:
            for ledger in ledgers:
                drop_database(ledger.database_url)
            shutil.rmtree(workdir, ignore_errors=True)
    report = render(args, ledgers, rounds, calibration, time.monotonic() - started)
    print(report)
    if args.out != "-":
        out = Path(args.out)
        out.write_text(out.read_text().rstrip() + "\n\n" + report if out.exists() else report)
        progress(f"appended to {out}")
    return 1 if any(r.submit is not None and r.submit.errors for r in rounds) else 0


def one_round(
    setup: Setup, ledger: Ledger, round_no: int, args: argparse.Namespace, workdir: Path, postgres: int | None
) -> Round:
    gateway = setup.serve(f"serve-{ledger.name}-r{round_no}", 1, database_url=ledger.database_url)
    progress(f"round {round_no}/{args.rounds}, {ledger.name} ledger ({ledger.held_open:,} open tasks)")
    measured = Round(ledger.name, round_no)
    families = {"gateway": [gateway.popen.pid], **({"postgres": [postgres]} if postgres is not None else {})}
    try:
        time.sleep(args.settle_in)
        looks_before = upstream_looks(gateway)
        cpu: dict[str, float] = {}
        idle_started = time.monotonic()
        with cpu_of(families, cpu):
            time.sleep(args.idle)
        measured.idle_seconds = time.monotonic() - idle_started
        measured.idle_looks = upstream_looks(gateway) - looks_before
        measured.idle_cpu_s = cpu.get("gateway", 0.0)
        measured.idle_pg_cpu_s = cpu.get("postgres", 0.0)
        progress(
            f"  idle: {measured.idle_looks / measured.idle_seconds:6.1f} upstream looks/s, gateway CPU "
            f"{measured.idle_cpu_s / measured.idle_seconds * 100:5.1f} % of a core"
        )
        target = Target("submit", "POST", f"{gateway.url}/v1/images/generations", ledger.tenant_key, SUBMIT_BODY)
        measured.submit = measure(
            target, ledger.name, args.concurrency, args, workdir, families, label_width=6, round_no=round_no
        )
        measured.settled_s = asyncio.run(settle(ledger, SETTLE_TIMEOUT_S))
        progress(
            f"  the row's tasks settled in {measured.settled_s:.0f} s"
            if measured.settled_s >= 0
            else "  the row's tasks did not settle"
        )
    finally:
        gateway.stop()
    return measured


# --- report -------------------------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def render(
    args: argparse.Namespace, ledgers: list[Ledger], rounds: list[Round], calibration: float, elapsed: float
) -> str:
    by = {name: [r for r in rounds if r.ledger == name] for name in LEDGERS}
    held = {ledger.name: ledger.held_open for ledger in ledgers}
    lines = [
        f"## Poller cost: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- Command: `{command_line()}` (took {elapsed:.0f} s)",
        f"- Gateway: {git_describe(Path(__file__).resolve().parents[1])}",
        f"- Machine: {machine()}; CPU calibration: a fixed Python loop took {calibration:.1f} ms (lower is faster)",
        f"- Software: wrk {wrk_version()}, PostgreSQL at {shown_url(args.database_url)}, "
        + versions("fastapi", "uvicorn", "sqlalchemy", "asyncpg", "httpx"),
        f"- Ledgers: `none` (no open task) and `open` ({held.get('open', 0):,} tasks the sandbox holds open all run). "
        f"Per round and ledger a fresh `serve` (one worker, defaults), {args.settle_in:g} s to reach the poller's "
        f"steady state, {args.idle:g} s idle, then the submit row ({args.warmup:g} s warm-up, {args.duration:g} s "
        f"of `wrk -t1 -c{args.concurrency}`, 3 s tasks), then until its tasks were settled. Medians over "
        f"{args.rounds} round(s); the order of the ledgers alternates.",
        "",
        "| ledger | open tasks | idle: upstream looks/s | idle: gateway CPU, % of a core | idle: PostgreSQL CPU, % "
        "| submit req/s | p50 ms | p99 ms | gateway CPU ms/submit | settled in s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in LEDGERS:
        rs = by[name]
        if not rs:
            continue
        looks = _median([r.idle_looks / r.idle_seconds for r in rs])
        cpu = _median([r.idle_cpu_s / r.idle_seconds * 100 for r in rs])
        pg = _median([r.idle_pg_cpu_s / r.idle_seconds * 100 for r in rs])
        subs = [r.submit for r in rs if r.submit is not None]
        rps = _median([s.rps for s in subs])
        cpu_submit = _median([v for s in subs if (v := s.cpu_ms_per_request("gateway")) is not None])
        lines.append(
            f"| {name} | {held.get(name, 0):,} | {looks:.1f} | {cpu:.1f} | {pg:.1f} | {rps:,.0f} | "
            f"{_median([s.p50_ms for s in subs]):.2f} | {_median([s.p99_ms for s in subs]):.2f} | {cpu_submit:.2f} | "
            f"{_median([r.settled_s for r in rs]):.0f} |"
        )
    lines += [
        "",
        "Per round:",
        "",
        "| round | ledger | looks/s | gateway CPU % | submit req/s |",
        "|--:|---|--:|--:|--:|",
    ]
    for r in rounds:
        rps = r.submit.rps if r.submit is not None else float("nan")
        lines.append(
            f"| {r.round} | {r.ledger} | {r.idle_looks / r.idle_seconds:.1f} | "
            f"{r.idle_cpu_s / r.idle_seconds * 100:.1f} | {rps:,.0f} |"
        )
    opened, none = by["open"], by["none"]
    if opened and none and held.get("open"):
        n = held["open"]
        looks = _median([r.idle_looks / r.idle_seconds for r in opened]) - _median(
            [r.idle_looks / r.idle_seconds for r in none]
        )
        cpu = _median([r.idle_cpu_s / r.idle_seconds for r in opened]) - _median(
            [r.idle_cpu_s / r.idle_seconds for r in none]
        )
        ratios = [
            o.submit.rps / z.submit.rps
            for o, z in zip(sorted(opened, key=lambda r: r.round), sorted(none, key=lambda r: r.round), strict=False)
            if o.submit is not None and z.submit is not None and z.submit.rps
        ]
        ratio = _median([s.rps for r in opened if (s := r.submit)]) / _median([s.rps for r in none if (s := r.submit)])
        lines += [
            "",
            f"**Per open task** (open ledger less the empty one): {looks / n * 60:.1f} upstream status calls per "
            f"minute; gateway CPU {cpu / n * 1000:.3f} ms per second (all {n:,}: {cpu * 100:.1f} % of a core); "
            f"{cpu / looks * 1000 if looks > 0 else float('nan'):.2f} ms of gateway CPU per look.",
            f"**Submit with {n:,} open tasks over none:** {ratio:.2f}x req/s (per round: "
            + ", ".join(f"{x:.2f}x" for x in ratios)
            + ").",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_url(parser, "its own two databases")
    parser.add_argument("--open", type=int, default=1000, help="open tasks in the open ledger (default 1,000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both ledgers (default 2)")
    parser.add_argument("--settle-in", type=float, default=15.0, help="seconds before the idle window (default 15)")
    parser.add_argument("--idle", type=float, default=20.0, help="idle seconds measured (default 20)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the submit row (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up of the row (default 2)")
    parser.add_argument("--concurrency", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results file to append to, or - for stdout only")
    parser.add_argument("--keep", action="store_true", help="keep the databases and the work directory")
    args = parser.parse_args(argv)
    if args.open < 1 or args.rounds < 1 or args.idle <= 0:
        parser.error("--open and --rounds must be at least 1, --idle positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_code("poller_cost", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
