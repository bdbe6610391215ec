"""The hot path against its references: task status and submit through the gateway, beside the same calls sent
straight to the sandbox upstream and a minimal FastAPI app, all measured in one run with `wrk`.

    .venv/bin/python bench/hot_path.py                          # ~4-5 minutes on 2 cores; appends to RESULTS.md
    .venv/bin/python bench/hot_path.py --checkout /tmp/old --label "before"   # the gateway of another checkout

See bench/README.md for what runs, what each column means and how to read the result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
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
    machine_busy,
    plain_url,
    proc_stat,
    progress,
    run_cli,
    shown_url,
    start_server,
    versions,
    wait_ready,
)
from pg_wire import CountingProxy, difference
from sqlalchemy.engine import make_url

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DATABASE_ENV = ("BENCH_DATABASE_URL", "GATEWAY_TEST_DATABASE_URL")
UPSTREAM_KEY = "sk-bench-upstream-0123456789"
SUBMIT_BODY = json.dumps({"model": "doubao-seedream-4-0", "prompt": "bench", "n": 1})
HIGH = 1_000_000_000
LIMITS = ["--daily-images", HIGH, "--monthly-images", HIGH, "--max-in-flight", HIGH]
COUNT_REQUESTS = 300  # requests per operation in the database-work phase
WRK_TIMEOUT = "10s"
SETTLE_TIMEOUT_S = 600.0  # thousands of 3 s tasks, each looked at by the reconciler within its query budget

# The Lua script of every wrk run: the request, then one JSON line with what wrk measured.
LUA = """
wrk.method = "{method}"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "wrk-bench/1"
{body}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK_RESULT {{"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class Target:
    """One request wrk repeats: what it is, where it goes, with which key and body."""

    name: str
    method: str
    url: str
    key: str
    body: str | None = None

    def script(self, workdir: Path) -> Path:
        body = f"wrk.body = {json.dumps(self.body)}" if self.body is not None else ""
        path = workdir / f"wrk-{re.sub(r'[^a-z0-9]+', '-', self.name.lower())}.lua"
        path.write_text(LUA.format(method=self.method, key=self.key, body=body))
        return path


@dataclass
class Measured:
    row: str
    side: str  # "gateway", "direct", "minimal"
    concurrency: int
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu: dict[str, float] = field(default_factory=dict)  # core-seconds per process family during the run
    round: int = 1  # of --rounds (the references are measured once, in round 1)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def busiest_share(self, family: str) -> float | None:
        """The busiest process's part of the family's CPU: with two gateway workers, about 0.5 when the kernel gave
        both of them connections, 1.0 when one worker accepted them all (wrk keeps its connections for the row)."""
        total = self.cpu.get(family)
        return self.cpu[family + BUSIEST] / total if total and family + BUSIEST in self.cpu else None

    def cpu_ms_per_request(self, family: str) -> float | None:
        if family not in self.cpu or not self.requests:
            return None
        return self.cpu[family] * 1000 / self.requests


# --- CPU by process family ------------------------------------------------------------------------------------


def descendants(roots: Sequence[int], table: Mapping[int, tuple[int, float, str]]) -> set[int]:
    found = {pid for pid in roots if pid in table}
    grew = True
    while grew:
        grew = False
        for pid, (parent, _, _) in table.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found


BUSIEST = ":busiest"  # in Measured.cpu: the CPU seconds of the family's busiest process


@contextlib.contextmanager
def cpu_of(families: Mapping[str, Sequence[int]], into: dict[str, float]) -> Iterator[None]:
    """CPU seconds used by each family of processes (roots and their children) while the block runs."""
    before = all_processes()
    busy_before = machine_busy()
    yield
    after = all_processes()
    busy_after = machine_busy()
    for family, roots in families.items():
        used = {p: after[p][1] - before[p][1] if p in before else after[p][1] for p in descendants(roots, after)}
        into[family] = sum(used.values())
        into[family + BUSIEST] = max(used.values(), default=0.0)
    if busy_before is not None and busy_after is not None:
        into["machine"] = busy_after - busy_before


def calibrate() -> float:
    """Milliseconds a fixed pure-Python loop takes here now: the CPU's speed on the day, for comparing runs."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i * i % 7
        best = min(best, time.perf_counter() - start)
    return best * 1000


# --- wrk --------------------------------------------------------------------------------------------------------


def wrk(target: Target, concurrency: int, seconds: float, workdir: Path) -> dict[str, Any]:
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds:g}s",
        f"--timeout={WRK_TIMEOUT}",
        "-s",
        str(target.script(workdir)),
        target.url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRK_RESULT "))
            return result
    raise BenchError(f"wrk gave no result for {target.name} ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def measure(
    target: Target,
    side: str,
    concurrency: int,
    args: argparse.Namespace,
    workdir: Path,
    families: Mapping[str, Sequence[int]],
    *,
    warmup: Target | None = None,
    label_width: int = 8,
    round_no: int = 1,
) -> Measured:
    """One row: `args.warmup` s of `warmup` (default: the target itself), then `args.duration` s measured."""
    wrk(warmup or target, concurrency, args.warmup, workdir)
    cpu: dict[str, float] = {}
    with cpu_of(families, cpu):
        result = wrk(target, concurrency, args.duration, workdir)
    measured = Measured(
        row=target.name,
        side=side,
        concurrency=concurrency,
        requests=int(result["requests"]),
        seconds=result["duration_us"] / 1e6,
        errors=int(result["non2xx"]) + int(result["socket_errors"]),
        p50_ms=result["p50_us"] / 1000,
        p90_ms=result["p90_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        cpu=cpu,
        round=round_no,
    )
    progress(
        f"  {side:{label_width}} {target.name:28} c={concurrency:<3} {measured.rps:8,.0f} req/s  "
        f"p50 {measured.p50_ms:7.2f} ms  p99 {measured.p99_ms:7.2f} ms  errors {measured.errors}"
    )
    return measured


# --- the servers --------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    workdir: Path
    checkout: Path
    database_url: str
    sandbox: Server
    env: dict[str, str]
    tenant_key: str = ""
    minting_key: str = ""
    servers: list[Server] = field(default_factory=list)

    def gateway_env(self, **extra: str) -> dict[str, str]:
        env = clean_env(**self.env, **extra)
        if self.checkout != ROOT:
            env["PYTHONPATH"] = str(self.checkout)
        return env

    def process_env(self, database_url: str | None, extra_env: Mapping[str, str] | None) -> dict[str, str]:
        """A gateway process's environment; a variant's CHECKOUT puts that checkout's `app` first on the path."""
        extra = dict(extra_env or {})
        checkout = extra.pop(CHECKOUT_VARIABLE, None)
        env = self.gateway_env(GATEWAY_DATABASE_URL=database_url or self.database_url, **extra)
        if checkout is not None:
            env["PYTHONPATH"] = str(Path(checkout).resolve())
        return env

    def cli(self, *args: object, database_url: str | None = None, extra_env: Mapping[str, str] | None = None) -> str:
        return run_cli([str(a) for a in args], self.process_env(database_url, extra_env), self.workdir)

    def serve(
        self, name: str, workers: int, database_url: str | None = None, extra_env: Mapping[str, str] | None = None
    ) -> Server:
        command = [*cli_command(), "serve", "--host", HOST]
        if workers > 1:
            command += ["--workers", str(workers)]
        env = self.process_env(database_url, extra_env)
        server = start_server(name, command, env, self.workdir, free_port())
        self.servers.append(server)
        wait_ready(server, "/healthz")
        return server


def start_sandbox(workdir: Path) -> Server:
    """The sandbox upstream every benchmark's gateways call (3 s tasks, quiet logs), ready."""
    sandbox_env = clean_env(SANDBOX_TASK_SECONDS="3", GATEWAY_LOG_LEVEL="warning")
    sandbox = start_server("sandbox", [*cli_command(), "sandbox", "--host", HOST], sandbox_env, workdir, free_port())
    wait_ready(sandbox, "/")
    return sandbox


def upstream_env(sandbox: Server) -> dict[str, str]:
    """A benchmark gateway's settings: the sandbox as its upstream with the bench key, fresh secrets."""
    return {
        "GATEWAY_UPSTREAM_BASE_URL": sandbox.url,
        "GATEWAY_UPSTREAM_KEYS": UPSTREAM_KEY,
        "GATEWAY_ADMIN_TOKEN": "adm-bench-" + secrets.token_urlsafe(16),
        "GATEWAY_SECRET_KEY": secrets.token_urlsafe(32),
        # The sandbox stands in for the public upstream, on loopback: kept results (on by default) copy from it as
        # they would from the upstream, instead of having each copy refused as an internal address and retried.
        "GATEWAY_RESULTS_ALLOW_PRIVATE": "true",
    }


def add_database_url(parser: argparse.ArgumentParser, what: str = "its own database") -> None:
    parser.add_argument(
        "--database-url",
        default=next((os.environ[n] for n in DATABASE_ENV if os.environ.get(n)), DEFAULT_DATABASE_URL),
        help=f"PostgreSQL server; the run creates and drops {what} there",
    )


CHECKOUT_VARIABLE = "CHECKOUT"  # in a --variant: the gateway of another checkout (e.g. yesterday's main)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """NAME:GATEWAY_X=value,... or NAME:CHECKOUT=/path (a --variant argument)."""
    name, _, assignments = text.partition(":")
    env = dict(part.split("=", 1) for part in assignments.split(",") if part.strip())
    if not name or not all(k.startswith("GATEWAY_") or k == CHECKOUT_VARIABLE for k in env):
        raise argparse.ArgumentTypeError("expected NAME:GATEWAY_X=value,... or NAME:CHECKOUT=/path")
    return name, env


def supports_workers(setup: Setup) -> bool:
    done = subprocess.run(
        [*cli_command(), "serve", "--help"],
        env=setup.gateway_env(),
        cwd=setup.workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    return "--workers" in done.stdout


def submit(client: httpx.Client, base: str, key: str) -> dict[str, Any]:
    response = client.post(
        f"{base}/v1/images/generations",
        content=SUBMIT_BODY,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    if response.status_code != 200:
        raise BenchError(f"submit answered {response.status_code}: {response.text[:500]}")
    answer: dict[str, Any] = response.json()
    return answer


def wait_status(client: httpx.Client, base: str, key: str, task_id: str, wanted: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"{base}/v1/images/generations/{task_id}", headers={"Authorization": f"Bearer {key}"})
        if response.status_code == 200 and response.json().get("status") == wanted:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"task {task_id} not {wanted} after {timeout_s:g} s: {response.text[:300]}")
        time.sleep(0.2)


def sandbox_config(setup: Setup, **values: Any) -> None:
    response = httpx.patch(f"{setup.sandbox.url}/_control/config", json=values, timeout=10, trust_env=False)
    if response.status_code != 200:
        raise BenchError(f"sandbox config refused {values}: {response.status_code} {response.text[:300]}")


@dataclass
class Tasks:
    completed: str
    open: str
    upstream_completed: str
    upstream_open: str
    token_completed: str = ""  # a completed task of the end user the token rows' tokens are for


@dataclass
class Ledger:
    """A gateway database ready for the rows: its bench tenant's key and its tasks, and the key that mints the token
    rows' tokens ("" for a checkout without end-user tokens: no token rows)."""

    database_url: str
    tenant_key: str
    tasks: Tasks
    minting_key: str = ""


TOKEN_END_USER = "bench-user"


def mint_token(base: str, minting_key: str) -> str:
    """An end-user token (POST /v1/tokens) for the token rows' end user, its longest lifetime (an hour)."""
    with httpx.Client(timeout=30, trust_env=False) as client:
        response = client.post(
            f"{base}/v1/tokens",
            json={"end_user": TOKEN_END_USER, "ttl_seconds": 3600},
            headers={"Authorization": f"Bearer {minting_key}"},
        )
    if response.status_code != 200:
        raise BenchError(f"minting a token answered {response.status_code}: {response.text[:300]}")
    token: str = response.json()["token"]
    return token


def prepare_ledger(setup: Setup, database_url: str, extra_env: Mapping[str, str] | None = None) -> Ledger:
    """Migrate `database_url` (with the variant's checkout, if it names one), create the bench tenant, make its
    tasks. A variant of another checkout gets a database of its own: its migrations may be older than ours."""
    setup.cli("migrate", database_url=database_url, extra_env=extra_env)
    created = last_json(
        setup.cli("tenants", "create", "bench", "--json", database_url=database_url, extra_env=extra_env)
    )
    setup.cli("tenants", "limits", "bench", *LIMITS, database_url=database_url, extra_env=extra_env)
    try:  # a checkout from before end-user tokens has no mint scope: its ledger gets no token rows
        minting = last_json(
            setup.cli(
                "keys",
                "create",
                "bench",
                "--scopes",
                "submit,read,mint",
                "--json",
                database_url=database_url,
                extra_env=extra_env,
            )
        )["key"]
    except BenchError:
        minting = ""
    gateway = setup.serve("serve-setup", 1, database_url=database_url, extra_env=extra_env)
    try:
        tasks = make_tasks(setup, gateway, created["key"], minting)
    finally:
        gateway.stop()
    return Ledger(database_url, created["key"], tasks, minting)


def make_tasks(setup: Setup, gateway: Server, tenant_key: str, minting_key: str = "") -> Tasks:
    """One completed and one open task of the bench tenant, and the sandbox's own ids of the same two; with a minting
    key, a completed task of the token rows' end user too."""
    with httpx.Client(timeout=30, trust_env=False) as client:
        sandbox_config(setup, task_seconds=0.2, queue_seconds=0.0)
        done = submit(client, gateway.url, tenant_key)["id"]
        wait_status(client, gateway.url, tenant_key, done, "completed")
        token_done = ""
        if minting_key:
            token = mint_token(gateway.url, minting_key)
            token_done = submit(client, gateway.url, token)["id"]
            wait_status(client, gateway.url, token, token_done, "completed")
        sandbox_config(setup, task_seconds=86400.0, queue_seconds=0.0)
        still = submit(client, gateway.url, tenant_key)["id"]
        sandbox_config(setup, task_seconds=3.0, queue_seconds=0.5)  # the sandbox's defaults, for the submit rows
        up_done = submit(client, setup.sandbox.url, UPSTREAM_KEY)["id"]
        wait_status(client, setup.sandbox.url, UPSTREAM_KEY, up_done, "completed")
        sandbox_config(setup, task_seconds=86400.0)
        up_open = submit(client, setup.sandbox.url, UPSTREAM_KEY)["id"]
        sandbox_config(setup, task_seconds=3.0)
    return Tasks(done, still, up_done, up_open, token_done)


# --- database work per request --------------------------------------------------------------------------------


def database_work(setup: Setup, tasks: Tasks, idle_s: float) -> dict[str, dict[str, float]]:
    """Round trips, statements and transactions per request, counted on the wire by a proxy in front of PostgreSQL.

    A gateway (one worker) is pointed at the proxy. Its background loops talk to the database too, so the counts of
    an idle stretch of `idle_s` are measured first and subtracted in proportion to each phase's duration."""
    parsed = make_url(setup.database_url)
    proxy = CountingProxy(parsed.host or "127.0.0.1", parsed.port or 5432).start()
    try:
        url = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        gateway = setup.serve("serve-counted", 1, database_url=url)
        try:
            return _count_work(setup, gateway, tasks, proxy, idle_s)
        finally:
            gateway.stop()
    finally:
        proxy.close()


def _count_work(
    setup: Setup, gateway: Server, tasks: Tasks, proxy: CountingProxy, idle_s: float
) -> dict[str, dict[str, float]]:
    auth = {"Authorization": f"Bearer {setup.tenant_key}"}
    results: dict[str, dict[str, float]] = {}
    with httpx.Client(timeout=30, trust_env=False) as client:
        token = mint_token(gateway.url, setup.minting_key) if setup.minting_key else None
        with_token = {"Authorization": f"Bearer {token}"}
        # Warm: the connection pool, prepared statements and whatever the gateway caches.
        for task_id in (tasks.completed, tasks.open):
            for _ in range(20):
                client.get(f"{gateway.url}/v1/images/generations/{task_id}", headers=auth)
        for _ in range(20):
            submit(client, gateway.url, setup.tenant_key)
            if token is not None:
                client.get(_status(gateway, tasks.token_completed), headers=with_token)
                submit(client, gateway.url, token)
        # The warm-up's tasks end (and are settled) before anything is counted.
        asyncio.run(settle(setup.database_url, tasks.open, SETTLE_TIMEOUT_S))
        before, started = proxy.snapshot(), time.monotonic()
        time.sleep(idle_s)
        idle = difference(proxy.snapshot(), before)
        idle_rate = {k: v / (time.monotonic() - started) for k, v in idle.items()}
        # Every status row before any submit row: the submits' tasks are settled by the background loop while the
        # rows after them run, which would count their statements in those rows.
        phases: list[tuple[str, Any]] = [
            ("status of a completed task", lambda: client.get(_status(gateway, tasks.completed), headers=auth)),
            ("status of an open task", lambda: client.get(_status(gateway, tasks.open), headers=auth)),
        ]
        if token is not None:
            phases.append(
                (TOKEN_STATUS, lambda: client.get(_status(gateway, tasks.token_completed), headers=with_token))
            )
        phases.append(("submit", lambda: submit(client, gateway.url, setup.tenant_key)))
        if token is not None:
            phases.append((TOKEN_SUBMIT, lambda: submit(client, gateway.url, token)))
        for name, call in phases:
            before, started = proxy.snapshot(), time.monotonic()
            for _ in range(COUNT_REQUESTS):
                call()
            elapsed = time.monotonic() - started
            counted = difference(proxy.snapshot(), before)
            results[name] = {k: max(0.0, (v - idle_rate[k] * elapsed) / COUNT_REQUESTS) for k, v in counted.items()}
        results["idle (per second)"] = idle_rate
    return results


def _status(gateway: Server, task_id: str) -> str:
    return f"{gateway.url}/v1/images/generations/{task_id}"


# --- the run ----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (Debian: apt-get install wrk)")
    checkout = Path(args.checkout).resolve() if args.checkout else ROOT
    if not (checkout / "app" / "cli").exists():
        raise BenchError(f"{checkout} is not a checkout of the gateway (no app/cli)")
    server_url = args.database_url
    started = time.monotonic()
    calibration = calibrate()
    workdir = Path(tempfile.mkdtemp(prefix="gw-hot-path-"))
    database_url = create_database(server_url, "gw_bench_hot")
    sandbox = minimal = twin = None
    setup: Setup | None = None
    extra_databases: list[str] = []
    rows: list[Measured] = []
    try:
        sandbox = start_sandbox(workdir)
        minimal = start_server(
            "minimal", [sys.executable, str(ROOT / "bench" / "minimal_app.py")], clean_env(), workdir, free_port()
        )
        wait_ready(minimal, "/task")
        twin = start_twin(workdir, database_url, sandbox)
        setup = Setup(workdir, checkout, database_url, sandbox, upstream_env(sandbox))
        progress(f"gateway of {checkout}: migrate, tenant, limits, tasks")
        worker_counts = [w for w in args.workers if w == 1 or supports_workers(setup)]
        if worker_counts != args.workers:
            progress("this checkout's `serve` has no --workers: one worker only")
        postgres = postgres_pid(server_url)
        main_ledger = prepare_ledger(setup, database_url)
        setup.tenant_key, setup.minting_key, tasks = main_ledger.tenant_key, main_ledger.minting_key, main_ledger.tasks
        ledgers: dict[str, Ledger] = {}
        for variant, variant_env in args.variant:
            if CHECKOUT_VARIABLE in variant_env:
                progress(
                    f"variant {variant}: the gateway of {variant_env[CHECKOUT_VARIABLE]}, on a database of its own"
                )
                extra_databases.append(create_database(server_url, "gw_bench_hot"))
                ledgers[variant] = prepare_ledger(setup, extra_databases[-1], variant_env)
            else:
                ledgers[variant] = main_ledger

        def families(gateway: Server | None) -> dict[str, list[int]]:
            assert sandbox is not None and minimal is not None and twin is not None
            found = {"sandbox": [sandbox.popen.pid], "minimal": [minimal.popen.pid], "twin": [twin.popen.pid]}
            if gateway is not None:
                found["gateway"] = [gateway.popen.pid]
            if postgres is not None:
                found["postgres"] = [postgres]
            return found

        progress("references: the minimal app and the sandbox")
        minimal_get = Target("minimal app, GET", "GET", f"{minimal.url}/task", "-")
        minimal_post = Target("minimal app, POST", "POST", f"{minimal.url}/task", "-", SUBMIT_BODY)
        up = f"{sandbox.url}/v1/images/generations"
        direct = {
            "status of a completed task": Target(
                "sandbox status (completed)", "GET", f"{up}/{tasks.upstream_completed}", UPSTREAM_KEY
            ),
            "status of an open task": Target(
                "sandbox status (open)", "GET", f"{up}/{tasks.upstream_open}", UPSTREAM_KEY
            ),
            "submit": Target("sandbox create", "POST", up, UPSTREAM_KEY, SUBMIT_BODY),
        }
        twin_post = Target(TWIN_ROW, "POST", f"{twin.url}/v1/images/generations", "-", SUBMIT_BODY)
        for c in args.concurrency:
            rows.append(measure(minimal_get, "minimal", c, args, workdir, families(None)))
            rows.append(measure(minimal_post, "minimal", c, args, workdir, families(None)))
            rows.append(measure(twin_post, "twin", c, args, workdir, families(None)))
        for name, target in direct.items():
            for c in concurrencies(name, args):
                rows.append(measure(target, "direct", c, args, workdir, families(None)))
        # Round after round, every configuration in turn, the order reversed every other round (A, B, C; C, B, A;
        # ...): a machine that drifts during the run, or a gateway that runs faster for being started after another
        # one, weighs on every variant alike rather than on the ones measured last.
        schedule = [
            (round_no, variant, workers)
            for round_no in range(1, args.rounds + 1)
            for variant in (args.variant if round_no % 2 else args.variant[::-1])
            for workers in worker_counts
        ]
        for round_no, (variant, variant_env), workers in schedule:
            suffix = f"-r{round_no}" if args.rounds > 1 else ""
            ledger = ledgers[variant]
            gateway = setup.serve(
                f"serve-w{workers}{variant}{suffix}", workers, database_url=ledger.database_url, extra_env=variant_env
            )
            side = f"w{workers}" + (f" {variant}" if variant else "")
            progress(
                f"gateway, serve --workers {workers}"
                + (f", {variant}: {variant_env}" if variant else "")
                + (f", round {round_no}/{args.rounds}" if args.rounds > 1 else "")
            )
            gw = f"{gateway.url}/v1/images/generations"
            targets = {
                "status of a completed task": Target(
                    "status of a completed task", "GET", f"{gw}/{ledger.tasks.completed}", ledger.tenant_key
                ),
                "status of an open task": Target(
                    "status of an open task", "GET", f"{gw}/{ledger.tasks.open}", ledger.tenant_key
                ),
                "submit": Target("submit", "POST", gw, ledger.tenant_key, SUBMIT_BODY),
            }
            if ledger.minting_key:  # the same calls with an end-user token (one per configuration: they expire)
                token = mint_token(gateway.url, ledger.minting_key)
                by_token = {
                    TOKEN_STATUS: Target(TOKEN_STATUS, "GET", f"{gw}/{ledger.tasks.token_completed}", token),
                    TOKEN_SUBMIT: Target(TOKEN_SUBMIT, "POST", gw, token, SUBMIT_BODY),
                }
                # Each token row right after its key row: the status rows before any submit row leaves a backlog
                # for the background loop to settle while later rows run.
                order = [
                    "status of a completed task",
                    TOKEN_STATUS,
                    "status of an open task",
                    "submit",
                    TOKEN_SUBMIT,
                ]
                targets = {name: {**targets, **by_token}[name] for name in order}
            try:
                for name, target in targets.items():
                    if args.rows and name.split()[0] not in args.rows:
                        continue
                    for c in concurrencies(name, args):
                        measured = measure(
                            target, side, c, args, workdir, families(gateway), label_width=16, round_no=round_no
                        )
                        rows.append(measured)
                # The submit rows leave tasks that the gateway's background loop ends over the next seconds: let it
                # (while it runs), so that the next configuration's rows do not pay for this one's backlog.
                settled = asyncio.run(settle(ledger.database_url, ledger.tasks.open, SETTLE_TIMEOUT_S))
                progress(f"  backlog settled in {settled:.0f} s" if settled >= 0 else "  backlog did not settle")
            finally:
                gateway.stop()
        progress("database work per request (through a counting proxy)")
        work = database_work(setup, tasks, args.idle)
        tasks_left = asyncio.run(count_tasks(database_url))
    finally:
        for server in [*(setup.servers if setup else []), sandbox, minimal, twin]:
            if server is not None:
                server.stop()
        if not args.keep:
            for name in [database_url, *extra_databases]:
                drop_database(name)
            shutil.rmtree(workdir, ignore_errors=True)
    report = render(args, checkout, rows, work, calibration, time.monotonic() - started, server_url, tasks_left)
    print(report)
    if args.out != "-":
        out = Path(args.out)
        out.write_text(out.read_text().rstrip() + "\n\n" + report if out.exists() else report)
        progress(f"appended to {out}")
    return 1 if any(row.errors for row in rows) else 0


TWIN_ROW = "plain twin, submit (2 workers)"


def start_twin(workdir: Path, database_url: str, sandbox: Server) -> Server:
    """The submit's plain twin (bench/twin_app.py): the same I/O per submit, two workers, on the bench database."""
    command = [sys.executable, str(ROOT / "bench" / "twin_app.py"), "--workers", "2", "--host", HOST]
    command += ["--database-url", database_url, "--upstream", sandbox.url, "--key", UPSTREAM_KEY]
    twin = start_server("twin", command, clean_env(), workdir, free_port())
    wait_ready(twin, "/healthz")
    return twin


TOKEN_STATUS = "status of a completed task (token)"
TOKEN_SUBMIT = "submit (token)"


def concurrencies(name: str, args: argparse.Namespace) -> list[int]:
    """Every row at every concurrency asked for (issue 20 holds the open task's status at c=16 too)."""
    del name
    return list(args.concurrency)


def postgres_pid(server_url: str) -> int | None:
    """PostgreSQL's main process when it runs on this machine (its backends' CPU time is then read from /proc)."""

    async def postmaster() -> int | None:
        conn = await asyncpg.connect(plain_url(server_url), timeout=5)
        try:  # read while the backend lives: its parent is the postmaster
            backend = proc_stat(int(await conn.fetchval("SELECT pg_backend_pid()")))
        finally:
            await conn.close()
        if backend is None or backend[2] != "postgres":
            return None
        return backend[0]

    return asyncio.run(postmaster())


async def settle(database_url: str, keep_open: str, timeout_s: float) -> float:
    """Seconds until no task but `keep_open` is open in the ledger; -1 after `timeout_s`."""
    conn = await asyncpg.connect(plain_url(database_url), timeout=5)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout_s:
            left = await conn.fetchval(
                "SELECT count(*) FROM tasks WHERE status NOT IN ('completed', 'failed') AND id <> $1", keep_open
            )
            if not left:
                return time.monotonic() - started
            await asyncio.sleep(1.0)
        return -1.0
    finally:
        await conn.close()


async def count_tasks(database_url: str) -> int:
    conn = await asyncpg.connect(plain_url(database_url), timeout=5)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM tasks"))
    finally:
        await conn.close()


# --- report -----------------------------------------------------------------------------------------------------


def git_describe(checkout: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(checkout), "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    line = done.stdout.strip()[:90] or "?"
    return line + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def render(
    args: argparse.Namespace,
    checkout: Path,
    rows: list[Measured],
    work: dict[str, dict[str, float]],
    calibration: float,
    elapsed: float,
    server_url: str,
    tasks_left: int,
) -> str:
    def find(side: str, row: str, c: int) -> Measured | None:
        return next((m for m in rows if m.side == side and m.row == row and m.concurrency == c), None)

    rounds = args.rounds > 1
    label = f" ({args.label})" if args.label else ""
    lines = [
        f"## Hot path{label}: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- Command: `{command_line()}` (took {elapsed:.0f} s)",
        f"- Gateway: {git_describe(checkout)}",
        f"- Machine: {machine()}; CPU calibration: a fixed Python loop took {calibration:.1f} ms (lower is faster)",
        f"- Software: wrk {wrk_version()}, PostgreSQL at {shown_url(server_url)}, "
        + versions("fastapi", "uvicorn", "sqlalchemy", "asyncpg", "httpx", "pydantic"),
        f"- Each row: {args.warmup:g} s of warm-up, then {args.duration:g} s measured by `wrk -t1 -c<c>`; gateway "
        "`serve` with default settings (log level info, background polling on) on a fresh PostgreSQL database; "
        "the sandbox (`seedream-gateway sandbox`) is the upstream; all on the same cores."
        + (
            f" The gateway configurations ran in {args.rounds} rounds, each starting every configuration's gateway "
            "once, the order reversed every other round (the references ran once)."
            if args.rounds > 1
            else ""
        ),
        "",
        "### References",
        "",
        "| target | c | req/s | p50 ms | p99 ms | errors | its CPU ms/req | machine busy |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in rows:
        if m.side in ("minimal", "direct", "twin"):
            family = {"minimal": "minimal", "direct": "sandbox", "twin": "twin"}[m.side]
            lines.append(
                f"| {m.row} | {m.concurrency} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.errors} | "
                f"{_ms(m.cpu_ms_per_request(family))} | {_busy(m)} |"
            )
    lines += [
        "",
        "### Gateway",
        "",
        "Ratios: req/s against the minimal app's GET (status) or POST (submit) at the same concurrency; p50 against "
        "the minimal app's (status of a completed task) or the sandbox's own call (open task, submit). Added = gateway "
        "minus the sandbox's own call. Submit rows also against the plain twin (bench/twin_app.py: the same I/O per "
        "submit, two workers): its req/s and p50 at the same concurrency. Busiest process: its part of the gateway's "
        "CPU (with two workers about 50 %; near 100 %, one worker had accepted all of wrk's connections, which it "
        "keeps for the row, and the row measures one worker).",
        "",
        "| operation | workers | c | "
        + ("round | " if rounds else "")
        + "req/s | x minimal req/s | p50 ms | x ref p50 | added p50 ms | added p99 ms "
        "| x twin req/s | x twin p50 | errors | gateway CPU ms/req | busiest process | PostgreSQL CPU ms/req |",
        "|---|--|--:|" + ("--:|" if rounds else "") + "--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    # One configuration's rows together, and each row's rounds one under the other.
    gateway_rows = [m for m in rows if m.side.startswith("w")]
    first_seen: dict[tuple[str, str, int], int] = {}
    for m in gateway_rows:
        first_seen.setdefault((m.side, m.row, m.concurrency), len(first_seen))
    for m in sorted(gateway_rows, key=lambda m: (first_seen[m.side, m.row, m.concurrency], m.round)):
        submits = m.row.startswith("submit")
        ref_minimal = find("minimal", "minimal app, POST" if submits else "minimal app, GET", m.concurrency)
        direct = find("direct", _direct_row(m.row), m.concurrency)
        ref_p50 = ref_minimal if m.row.startswith("status of a completed task") else direct
        minimal_rps = ref_minimal.rps if ref_minimal else None
        twin_ref = find("twin", TWIN_ROW, m.concurrency) if submits else None
        cells = [
            m.row,
            m.side[1:],
            str(m.concurrency),
            *([str(m.round)] if rounds else []),
            f"{m.rps:,.0f}",
            _ratio(m.rps, minimal_rps),
            f"{m.p50_ms:.2f}",
            _ratio(m.p50_ms, ref_p50.p50_ms if ref_p50 else None),
            _diff(m.p50_ms, direct.p50_ms if direct else None),
            _diff(m.p99_ms, direct.p99_ms if direct else None),
            _ratio(m.rps, twin_ref.rps) if twin_ref else "",
            _ratio(m.p50_ms, twin_ref.p50_ms) if twin_ref else "",
            str(m.errors),
            _ms(m.cpu_ms_per_request("gateway")),
            _share(m.busiest_share("gateway")),
            _ms(m.cpu_ms_per_request("postgres")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _variants_table(args, rows)
    lines += [
        "",
        "### Database work per request",
        "",
        f"Counted on the wire by a proxy in front of PostgreSQL (bench/pg_wire.py), {COUNT_REQUESTS} sequential "
        f"requests each after a warm-up, one worker; the background loops' own traffic (measured idle for "
        f"{args.idle:g} s) subtracted.",
        "",
        "| operation | round trips | statements | transactions |",
        "|---|--:|--:|--:|",
    ]
    for name, counts in work.items():
        lines.append(
            f"| {name} | {counts['round_trips']:.1f} | {counts['statements']:.1f} | {counts['transactions']:.1f} |"
        )
    lines += ["", f"Tasks in the ledger at the end: {tasks_left:,}.", ""]
    return "\n".join(lines)


def _variants_table(args: argparse.Namespace, rows: list[Measured]) -> list[str]:
    """With several --variant: each one's throughput and gateway CPU per request against the first's, row by row.

    Each figure is the median over the rounds; a ratio is the ratio of the medians. With several rounds, the lowest
    and highest of the per-round ratios (round r of a variant against round r of the first) follow it in brackets.
    """
    if len(args.variant) < 2:
        return []
    first = args.variant[0][0]
    names = [name for name, _ in args.variant]
    others = names[1:]
    rounds = args.rounds > 1
    spread = " (in brackets: the lowest and highest of the per-round ratios, round r against round r)" if rounds else ""
    lines = [
        "",
        "### Variants",
        "",
        "; ".join(f"`{name}`: {_assignments(env)}" for name, env in args.variant)
        + f". Each against `{first}`, same workers and concurrency: throughput, and the gateway's CPU per request "
        "(less sensitive than throughput to what else the machine is doing)."
        + (f" Medians over {args.rounds} rounds; a ratio is the ratio of the medians{spread}." if rounds else ""),
        "",
        "| operation | workers | c | "
        + " | ".join(f"{name} req/s" for name in names)
        + " | "
        + " | ".join(f"{name} / {first} req/s" for name in others)
        + " | "
        + " | ".join(f"{name} CPU ms/req" for name in names)
        + " | "
        + " | ".join(f"{name} / {first} CPU/req" for name in others)
        + " |",
        "|---|--:|--:|" + "--:|" * (4 * len(names) - 2),
    ]
    keys = list(dict.fromkeys((m.row, m.side.split()[0], m.concurrency) for m in rows if m.side.startswith("w")))
    for row, workers, c in keys:
        # variant -> round -> its row
        found = {
            name: {m.round: m for m in rows if m.row == row and m.concurrency == c and m.side == f"{workers} {name}"}
            for name in names
        }
        rps = {name: {r: m.rps for r, m in by_round.items()} for name, by_round in found.items()}
        cpu = {
            name: {r: v for r, m in by_round.items() if (v := m.cpu_ms_per_request("gateway")) is not None}
            for name, by_round in found.items()
        }
        cells = [row, workers[1:], str(c)]
        cells += [_count(_median(rps[name])) for name in names]
        cells += [_ratio_of(rps[name], rps[first], rounds) for name in others]
        cells += [_ms(_median(cpu[name])) for name in names]
        cells += [_ratio_of(cpu[name], cpu[first], rounds) for name in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _median(by_round: Mapping[int, float]) -> float | None:
    return statistics.median(by_round.values()) if by_round else None


def _count(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "-"


def _ratio_of(values: Mapping[int, float], references: Mapping[int, float], spread: bool) -> str:
    """The ratio of the medians; with `spread`, then the lowest and highest ratio of the rounds both have."""
    value, reference = _median(values), _median(references)
    if value is None:
        return "-"
    text = _ratio(value, reference)
    per_round = [values[r] / references[r] for r in sorted(values.keys() & references.keys()) if references[r]]
    if spread and per_round and text != "-":
        text += f" ({min(per_round):.2f}…{max(per_round):.2f})"
    return text


def _assignments(env: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items()) or "defaults"


def _direct_row(row: str) -> str:
    return {
        "status of a completed task": "sandbox status (completed)",
        "status of an open task": "sandbox status (open)",
        "submit": "sandbox create",
    }[row.removesuffix(" (token)")]


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def _diff(value: float, reference: float | None) -> str:
    return f"{value - reference:+.2f}" if reference is not None else "-"


def _ms(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _share(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "-"


def _busy(m: Measured) -> str:
    return f"{m.cpu['machine'] / m.seconds:.2f} cores" if "machine" in m.cpu and m.seconds else "-"


def wrk_version() -> str:
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"wrk (\S+)", done.stdout + done.stderr)
    return match.group(1) if match else "?"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_url(parser)
    parser.add_argument("--checkout", help="measure the gateway of another checkout (e.g. a git worktree)")
    parser.add_argument("--label", default="", help="a word for the report's heading (e.g. before, after)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per row (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per row (default 2)")
    parser.add_argument("--idle", type=float, default=3.0, help="idle seconds for the database-work baseline")
    parser.add_argument("--concurrency", type=_ints, default=[1, 16], help="comma-separated (default 1,16)")
    parser.add_argument("--workers", type=_ints, default=[1, 2], help="gateway workers to measure (default 1,2)")
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        help="NAME:ENV=VALUE,... a gateway configuration to measure (repeatable; the first is the others' reference), "
        "e.g. plain:GATEWAY_METRICS_ENABLED=false,GATEWAY_LOG_LEVEL=warning observed:GATEWAY_LOG_FORMAT=json",
    )
    parser.add_argument(
        "--rounds",
        type=_positive,
        default=1,
        metavar="N",
        help="run the gateway configurations N times, interleaved (round 1: each --variant in turn, then round 2...); "
        "the Variants table gives medians over the rounds and the spread of the per-round ratios (default 1)",
    )
    parser.add_argument(
        "--rows", type=lambda text: text.split(","), default=[], help="only these operations: status,submit"
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results file to append to, or - for stdout only")
    parser.add_argument("--keep", action="store_true", help="keep the database and the work directory")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive integer")
    return value


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.variant = args.variant or [("", {})]
    return exit_code("hot_path", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
