"""Which way the gateway should call its upstream: httpx's default transport, httpx with the `httpx-aiohttp` transport
(both through `httpx.AsyncClient.request`, httpx's public API), raw aiohttp, and the app's own `ToAPIsAdapter.create`
as `app.upstream.feature.build_upstream` builds it.

Real processes on real sockets. The upstream is the project's sandbox (`python -m app.cli sandbox`, tasks that never
finish), in its own process. Each client variant runs in a fresh process of its own (uvloop, like the gateway under
uvicorn), with one shared client and a closed loop of --concurrency workers that POST `/v1/images/generations`
(`{"prompt": "bench", "n": 1}`, the gateway's submit call) and parse the JSON answer, for --warmup seconds
(discarded) and then --seconds measured; --rounds repeats every client, in a rotated order, and the tables give the
medians. When the sandbox itself turns out to be the bottleneck (its process at more than 85% of a core with raw
aiohttp, the fastest client), the same clients are measured again against a minimal upstream: a raw ASGI app under
the same uvicorn, answering the sandbox's own create answer, byte for byte.

    .venv/bin/python bench/upstream_transport.py [--concurrency 16] [--seconds 5] [--rounds 3] [--out bench/RESULTS.md]

See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from common import (
    DEFAULT_OUT,
    HOST,
    ROOT,
    BenchError,
    Server,
    clean_env,
    command_line,
    display_path,
    exit_code,
    free_port,
    machine,
    percentile,
    progress,
    run_async,
    start_server,
    tail,
    versions,
    wait_ready,
    write_section,
)

if str(ROOT) not in sys.path:  # `python bench/upstream_transport.py` puts bench/ first, not the checkout
    sys.path.insert(0, str(ROOT))

from app.core.config import Settings
from app.upstream.toapis import ToAPIsAdapter, build_session

PATH = "/v1/images/generations"
API_KEY = "sk-bench"
USER_AGENT = "bench/1"
BODY: dict[str, Any] = {"prompt": "bench", "n": 1}
AUTH = {"Authorization": f"Bearer {API_KEY}"}

SATURATED = 0.85  # upstream core share above which the upstream, not the client, sets the pace
WORKER_SLACK_S = 30.0  # a client process taking this much longer than its run is stopped
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
SECTION = "upstream_transport"
PACKAGES = (
    "httpx",
    "httpcore",
    "anyio",
    "httpx-aiohttp",
    "aiohttp",
    "uvloop",
    "uvicorn",
    "httptools",
    "fastapi",
    "pydantic",
)


@dataclass(frozen=True)
class Client:
    key: str
    label: str


CLIENTS = (
    Client("httpx-default", "httpx, default transport (`httpx.AsyncHTTPTransport`), `AsyncClient.request`"),
    Client("httpx-aiohttp", "httpx + `httpx_aiohttp.AiohttpTransport`, `AsyncClient.request`"),
    Client("app", "the app's `ToAPIsAdapter.create`, as `build_upstream` builds it"),
    Client("aiohttp", "raw `aiohttp.ClientSession`"),
)
BASELINE = "httpx-default"
HTTPX = "httpx-aiohttp"
APP_CLIENT = "app"
FASTEST = "aiohttp"


# --- the client process -------------------------------------------------------------------------------------------


def settings_default(name: str) -> Any:
    """A default of the app's Settings, without reading the environment or a .env file."""
    return Settings.model_fields[name].default


def app_adapter(base_url: str, max_connections: int, timeout_s: float, connect_timeout_s: float) -> ToAPIsAdapter:
    """The adapter as `app.upstream.feature.build_upstream` builds it from these settings."""
    session = build_session(
        user_agent=USER_AGENT,
        timeout_s=timeout_s,
        connect_timeout_s=connect_timeout_s,
        max_connections=max_connections,
    )
    return ToAPIsAdapter(session, base_url)


@contextlib.asynccontextmanager
async def open_client(kind: str, base_url: str) -> AsyncIterator[Callable[[], Awaitable[dict[str, Any]]]]:
    """One shared client of the given kind; yields `send()`, which makes the submit call and returns its JSON."""
    max_connections: int = settings_default("upstream_max_connections")
    timeout_s: float = settings_default("upstream_timeout_s")
    connect_timeout_s: float = settings_default("upstream_connect_timeout_s")
    if kind == "aiohttp":
        session = aiohttp.ClientSession(
            base_url=base_url,
            connector=aiohttp.TCPConnector(limit=max_connections),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=timeout_s),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )

        async def send_aiohttp() -> dict[str, Any]:
            async with session.post(PATH, json=BODY, headers=AUTH) as response:
                raw = await response.read()
                return checked(response.status, raw)

        async with session:
            yield send_aiohttp
        return
    if kind == APP_CLIENT:
        adapter = app_adapter(base_url, max_connections, timeout_s, connect_timeout_s)

        async def send_adapter() -> dict[str, Any]:
            task = await adapter.create(API_KEY, BODY)
            return {"id": task.id}

        try:
            yield send_adapter
        finally:
            await adapter.aclose()
        return
    if kind not in (BASELINE, HTTPX):
        raise BenchError(f"unknown client {kind!r}")
    # httpx's public API, `AsyncClient.request`, over the transport httpx.AsyncClient makes when it is given none, or
    # over httpx-aiohttp's, with the app's limits, headers, timeouts and base URL.
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    transport: httpx.AsyncBaseTransport
    if kind == BASELINE:
        transport = httpx.AsyncHTTPTransport(limits=limits)
    else:
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits)
    client = httpx.AsyncClient(
        base_url=base_url,
        transport=transport,
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s, pool=connect_timeout_s),
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
    )

    async def send_httpx() -> dict[str, Any]:
        response = await client.request("POST", PATH, headers=AUTH, json=BODY)
        return checked(response.status_code, response.content)

    async with client:
        yield send_httpx


def checked(status: int, raw: bytes) -> dict[str, Any]:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {raw[:200]!r}")
    payload = json.loads(raw)
    if not isinstance(payload, dict) or not payload.get("id"):
        raise RuntimeError(f"unexpected answer: {raw[:200]!r}")
    return payload


def proc_cpu(pid: int | str) -> float:
    """User+system CPU seconds of a process, from /proc (0.0 where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    total = sum(values[:8])  # guest time is already counted in user
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


async def measure(kind: str, base_url: str, concurrency: int, warmup_s: float, seconds: float, server_pid: int) -> Any:
    """The closed loop: requests that complete inside the measured window count, the rest is warm-up or tail."""
    latencies: list[float] = []
    errors = 0
    samples: list[str] = []
    async with open_client(kind, base_url) as send:
        await send()  # the first connection and the lazy parts of the client, outside the clock
        start = time.perf_counter()
        window_start = start + warmup_s
        window_end = window_start + seconds
        marks: dict[str, tuple[float, float, float, float, float]] = {}

        def mark(name: str) -> None:
            busy, total = machine_cpu()
            marks[name] = (time.perf_counter(), proc_cpu("self"), proc_cpu(server_pid), busy, total)

        async def clock() -> None:
            await asyncio.sleep(window_start - time.perf_counter())
            mark("start")
            await asyncio.sleep(window_end - time.perf_counter())
            mark("end")

        async def worker() -> None:
            nonlocal errors
            while (sent := time.perf_counter()) < window_end:
                ok = True
                try:
                    await send()
                except Exception as e:
                    ok = False
                    if len(samples) < 3:
                        samples.append(f"{type(e).__name__}: {e}")
                done = time.perf_counter()
                if window_start <= done <= window_end:
                    if ok:
                        latencies.append(done - sent)
                    else:
                        errors += 1

        await asyncio.gather(clock(), *(worker() for _ in range(concurrency)))
    (t0, client0, server0, busy0, total0), (t1, client1, server1, busy1, total1) = marks["start"], marks["end"]
    latencies.sort()
    return {
        "client": kind,
        "loop": type(asyncio.get_running_loop()).__module__,
        "requests": len(latencies),
        "errors": errors,
        "error_samples": samples,
        "window_s": t1 - t0,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "client_cpu_s": client1 - client0,
        "server_cpu_s": server1 - server0,
        "machine_busy_s": busy1 - busy0,
        "machine_total_s": total1 - total0,
    }


def client_main(args: argparse.Namespace) -> int:
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    result = run_async(measure(args.client, args.url, args.concurrency, args.warmup, args.seconds, args.server_pid))
    print(json.dumps(result), flush=True)
    return 0


# --- the minimal upstream -----------------------------------------------------------------------------------------

Scope = Mapping[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def minimal_app(answer: bytes) -> ASGIApp:
    """A raw ASGI app: the fixed task object for POST /v1/images/generations, `{"status": "ok"}` for GET /."""
    json_headers = [(b"content-type", b"application/json")]
    ok = b'{"status":"ok"}'

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # read the request body, as any real upstream does
            message = await receive()
            more = bool(message.get("more_body", False))
        route = (scope["method"], scope["path"])
        if route == ("POST", PATH):
            status, body = 200, answer
        elif route == ("GET", "/"):
            status, body = 200, ok
        else:
            status, body = 404, b"{}"
        headers = [*json_headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def minimal_main(args: argparse.Namespace) -> int:
    import uvicorn

    answer = Path(args.answer_file).read_bytes()
    # The sandbox's uvicorn settings (`app.cli sandbox`): loop and http "auto" (uvloop, httptools), log level warning.
    uvicorn.run(minimal_app(answer), host=HOST, port=args.port, log_level="warning", lifespan="off")
    return 0


# --- servers ------------------------------------------------------------------------------------------------------


def child_env(**settings: str) -> dict[str, str]:
    """clean_env plus the checkout first on PYTHONPATH, so that the child processes import `app` from it."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return clean_env(PYTHONPATH=path, **settings)


def pin_to(cpu: int | None) -> Callable[[], None] | None:
    """A preexec_fn pinning the child to one CPU (inherited across exec); None when not pinning."""
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def start_upstream(name: str, command: list[str], env: Mapping[str, str], workdir: Path, cpu: int | None) -> Server:
    """Start an upstream server on a free port, pinned to cpu, and wait until it answers GET /."""
    server = start_server(name, command, env, workdir, free_port(), preexec_fn=pin_to(cpu))
    wait_ready(server, "/")
    return server


def probe(server: Server) -> bytes:
    """One submit call to the sandbox: it must work, and its answer is what the minimal upstream sends back."""
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        response = client.post(server.url + PATH, json=BODY, headers={**AUTH, "User-Agent": USER_AGENT})
    if response.status_code != 200:
        raise BenchError(f"the sandbox answered the submit with HTTP {response.status_code}: {response.text[:300]}")
    checked(response.status_code, response.content)
    return response.content


def reset_sandbox(server: Server) -> None:
    """Forget the tasks of the previous row, so every row starts against the same (empty) sandbox."""
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        client.post(server.url + "/_control/reset").raise_for_status()


# --- the run ------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One client's measured window, in one round."""

    client: Client
    requests: int
    errors: int
    error_samples: list[str]
    window_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float
    server_cpu_s: float
    machine_busy_s: float
    machine_total_s: float
    loop: str

    @property
    def rate(self) -> float:
        return self.requests / self.window_s if self.window_s > 0 else math.nan

    @property
    def server_busy(self) -> float:
        return self.server_cpu_s / self.window_s if self.window_s > 0 else math.nan

    @property
    def client_busy(self) -> float:
        return self.client_cpu_s / self.window_s if self.window_s > 0 else math.nan

    @property
    def client_cpu_us(self) -> float:
        return self.client_cpu_s * 1e6 / self.requests if self.requests else math.nan

    @property
    def others_busy(self) -> float:
        """Share of the whole machine used by processes other than the upstream and the client."""
        if self.machine_total_s <= 0:
            return math.nan
        return max(0.0, self.machine_busy_s - self.server_cpu_s - self.client_cpu_s) / self.machine_total_s


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


@dataclass
class Summary:
    """One client's rounds: medians of each figure."""

    client: Client
    rounds: list[Row]

    def _median(self, name: str) -> float:
        return median([getattr(r, name) for r in self.rounds])

    @property
    def rate(self) -> float:
        return self._median("rate")

    @property
    def p50_ms(self) -> float:
        return self._median("p50_ms")

    @property
    def p99_ms(self) -> float:
        return self._median("p99_ms")

    @property
    def client_cpu_us(self) -> float:
        return self._median("client_cpu_us")

    @property
    def client_busy(self) -> float:
        return self._median("client_busy")

    @property
    def server_busy(self) -> float:
        return self._median("server_busy")

    @property
    def others_busy(self) -> float:
        return max((r.others_busy for r in self.rounds), default=math.nan)

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.rounds)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)

    @property
    def error_samples(self) -> list[str]:
        return [s for r in self.rounds for s in r.error_samples][:3]


@dataclass
class Upstream:
    key: str
    label: str
    rows: list[Row]

    def row(self, key: str) -> Summary:
        client = next(c for c in CLIENTS if c.key == key)
        return Summary(client, [r for r in self.rows if r.client.key == key])

    @property
    def summaries(self) -> list[Summary]:
        return [self.row(c.key) for c in CLIENTS]

    @property
    def saturated(self) -> bool:
        return self.row(FASTEST).server_busy >= SATURATED


def run_client(client: Client, server: Server, args: argparse.Namespace, cpu: int | None, workdir: Path) -> Row:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role=client",
        f"--client={client.key}",
        f"--url={server.url}",
        f"--server-pid={server.popen.pid}",
        f"--concurrency={args.concurrency}",
        f"--warmup={args.warmup}",
        f"--seconds={args.seconds}",
        *([f"--cpu={cpu}"] if cpu is not None else []),
    ]
    log_path = workdir / f"{server.name}-{client.key}.log"
    with log_path.open("ab") as log:
        try:
            done = subprocess.run(
                command,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                timeout=args.warmup + args.seconds + WORKER_SLACK_S,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"the {client.key} client did not finish; log tail:\n{tail(log_path)}") from e
    if done.returncode != 0:
        raise BenchError(f"the {client.key} client exited with {done.returncode}; log tail:\n{tail(log_path)}")
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    fields = {k: v for k, v in result.items() if k != "client"}
    return Row(client=client, **fields)


def measure_upstream(
    key: str, label: str, server: Server, args: argparse.Namespace, cpu: int | None, workdir: Path
) -> Upstream:
    """Every client, --rounds times; each round starts one client further into the list."""
    rows = []
    for round_ in range(args.rounds):
        shift = round_ % len(CLIENTS)
        for client in (*CLIENTS[shift:], *CLIENTS[:shift]):
            if key == "sandbox":
                reset_sandbox(server)
            row = run_client(client, server, args, cpu, workdir)
            progress(
                f"  round {round_ + 1} {client.key:<14} {row.rate:8.0f} req/s  p50 {row.p50_ms:6.2f} ms  "
                f"{row.client_cpu_us:6.1f} us CPU/call  upstream {row.server_busy:4.0%} of a core, "
                f"client {row.client_busy:4.0%}" + (f"  {row.errors} errors" if row.errors else "")
            )
            rows.append(row)
    return Upstream(key, label, rows)


def choose_cpus(pin: bool) -> tuple[int | None, int | None, str]:
    """(upstream CPU, client CPU, note): two different CPUs of this process's affinity when there are two."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin:
        return None, None, "not pinned (--no-pin)"
    if len(available) < 2:
        return None, None, "not pinned (fewer than 2 CPUs available)"
    return available[0], available[1], f"upstream pinned to CPU {available[0]}, client to CPU {available[1]}"


def run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-upstream-transport-"))
    progress(f"logs in {workdir}")
    server_cpu, client_cpu, pinning = choose_cpus(not args.no_pin)
    servers: list[Server] = []
    upstreams: list[Upstream] = []
    ok = False
    try:
        sandbox = start_upstream(
            "sandbox",
            [sys.executable, "-m", "app.cli", "sandbox", "--host", HOST],
            child_env(SANDBOX_TASK_SECONDS="1000", GATEWAY_LOG_LEVEL="warning"),
            workdir,
            server_cpu,
        )
        servers.append(sandbox)
        answer = probe(sandbox)
        progress(f"sandbox upstream at {sandbox.url} (pid {sandbox.popen.pid}); {pinning}")
        upstreams.append(measure_upstream("sandbox", "the sandbox", sandbox, args, client_cpu, workdir))
        sandbox.stop()
        run_minimal = args.minimal == "always" or (args.minimal == "auto" and upstreams[0].saturated)
        if run_minimal:
            answer_file = workdir / "answer.json"
            answer_file.write_bytes(answer)
            minimal = start_upstream(
                "minimal",
                [sys.executable, str(Path(__file__).resolve()), "--role=minimal", f"--answer-file={answer_file}"],
                child_env(),
                workdir,
                server_cpu,
            )
            servers.append(minimal)
            progress(f"minimal upstream at {minimal.url} (pid {minimal.popen.pid})")
            upstreams.append(measure_upstream("minimal", "the minimal upstream", minimal, args, client_cpu, workdir))
        ok = True
    finally:
        for server in servers:
            server.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
    section = render(upstreams, args, pinning, time.monotonic() - began)
    print(section)
    if args.out != "-":
        write_section(Path(args.out), SECTION, section, "# Benchmark results\n")
        progress(f"wrote {display_path(args.out)}")
    return 1 if any(r.errors for u in upstreams for r in u.rows) else 0


# --- report -------------------------------------------------------------------------------------------------------


def num(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def table(upstream: Upstream) -> list[str]:
    base = upstream.row(BASELINE).rate
    lines = [
        "| client | req/s | p50 ms | p99 ms | ratio to httpx default | client CPU µs/call | per round "
        "| client core busy | upstream core busy | requests | errors |",
        "|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|",
    ]
    for row in upstream.summaries:
        ratio = row.rate / base if base > 0 else math.nan
        rounds = ", ".join(num(r.client_cpu_us, 0) for r in row.rounds)
        lines.append(
            f"| {row.client.label} | {num(row.rate, 0)} | {num(row.p50_ms)} | {num(row.p99_ms)} | {num(ratio)}x | "
            f"{num(row.client_cpu_us, 0)} | {rounds} | {row.client_busy:.0%} | {row.server_busy:.0%} | "
            f"{row.requests} | {row.errors} |"
        )
    return lines


def verdict(upstream: Upstream) -> str:
    """What each way costs per call, against raw aiohttp."""
    base, httpx_row, app, fastest = (upstream.row(k) for k in (BASELINE, HTTPX, APP_CLIENT, FASTEST))
    floor = fastest.client_cpu_us

    def cost(row: Summary) -> str:
        return f"{num(row.client_cpu_us, 0)} µs (+{num(row.client_cpu_us - floor, 0)}, {num(row.rate, 0)} req/s)"

    return (
        f"Against {upstream.label}, client CPU per call: raw aiohttp {num(floor, 0)} µs ({num(fastest.rate, 0)} "
        f"req/s); httpx's public API over the aiohttp transport {cost(httpx_row)}; over httpx's default transport "
        f"{cost(base)}; the app's adapter {cost(app)}, its request building and parsing included."
    )


def bound_notes(upstream: Upstream) -> list[str]:
    """Which rows were capped by the upstream process and which by the client process."""
    notes = []
    rows = upstream.summaries
    by_upstream = [r.client.key for r in rows if r.server_busy >= SATURATED]
    by_client = [r.client.key for r in rows if r.client_busy >= SATURATED and r.server_busy < SATURATED]
    if by_upstream:
        notes.append(
            f"- Capped by the upstream (its process at >= {SATURATED:.0%} of a core): {', '.join(by_upstream)}. "
            "These rows' req/s measure the upstream, not the client."
        )
    if by_client:
        notes.append(
            f"- Capped by the client (its process at >= {SATURATED:.0%} of a core, the upstream below): "
            f"{', '.join(by_client)}."
        )
    others = max(r.others_busy for r in rows)
    if not math.isnan(others) and others > 0.05:
        notes.append(f"- Other processes used up to {others:.0%} of the machine during these rows.")
    for row in rows:
        if row.errors:
            notes.append(f"- {row.client.key}: {row.errors} errors, e.g. {'; '.join(row.error_samples)}")
    return [*notes, ""] if notes else []


def ceiling_note(sandbox: Upstream, *, minimal: bool) -> str:
    if minimal and sandbox.saturated:
        return (
            ": the upstream is the bottleneck there, so the clients were measured again against a minimal upstream "
            "(a raw ASGI app under the same uvicorn, answering the sandbox's create answer byte for byte)."
        )
    if minimal:
        return "; the minimal upstream was measured too (--minimal always)."
    if sandbox.saturated:
        return ": the upstream is the bottleneck there, and the minimal upstream was not measured (--minimal never)."
    return ": the clients, not the upstream, set the pace there, so no minimal upstream was needed."


def render(upstreams: list[Upstream], args: argparse.Namespace, pinning: str, elapsed: float) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    sandbox = upstreams[0]
    ceiling = sandbox.row(FASTEST)
    software = versions(*PACKAGES)
    loop = {r.loop for u in upstreams for r in u.rows}
    lines = [
        f"## Upstream client transport ({now} UTC)",
        "",
        "`bench/upstream_transport.py` measures the ways the gateway can call its upstream on its submit call: "
        "httpx's public API (`AsyncClient.request`) over httpx's default transport and over "
        "`httpx_aiohttp.AiohttpTransport`, raw aiohttp, and the app's own adapter. See `bench/README.md`. This section "
        "is replaced on every run.",
        "",
        f"- Command: `{command_line()}` (took {elapsed:.0f} s)",
        f"- Machine: {machine()}",
        f"- Software: {software}",
        f"- Setup: upstream and client in separate processes ({pinning}); each client in a fresh process on "
        f"{', '.join(sorted(loop))}, one shared client, keep-alive, a closed loop of {args.concurrency} workers, "
        f"{num(args.warmup, 1)} s warm-up then {num(args.seconds, 1)} s measured; {args.rounds} round(s), each "
        f"starting one client further into the list; medians over the rounds. Each request: `POST {PATH}` with "
        f"`Authorization: Bearer {API_KEY}`, `User-Agent: {USER_AGENT}`, JSON `{json.dumps(BODY)}`, the answer read "
        "and parsed as JSON. Latency: request sent to JSON parsed; only requests completed inside the measured "
        "window count. CPU: user+system time of the client and the upstream process (/proc) during the window.",
        f"- The sandbox (`python -m app.cli sandbox`, FastAPI, `SANDBOX_TASK_SECONDS=1000`) serves about "
        f"**{num(ceiling.rate, 0)} req/s** here (raw aiohttp, the fastest client; its process "
        f"{ceiling.server_busy:.0%} of a core)" + ceiling_note(sandbox, minimal=len(upstreams) > 1),
        "",
    ]
    for upstream in upstreams:
        lines += [
            f"### Against {upstream.label} (concurrency {args.concurrency})",
            "",
            *table(upstream),
            "",
        ]
        lines += bound_notes(upstream)
    lines += ["**Per call.** " + " ".join(verdict(u) for u in upstreams), ""]
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Req/s, p50/p99 and CPU per call of the ways to call the upstream: httpx's public API over its "
        "default transport and over the aiohttp transport, raw aiohttp, the app's adapter.",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop workers per client (default: 16)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per client (default: 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded seconds before each (default: 1)")
    parser.add_argument("--rounds", type=int, default=3, help="times every client is measured (default: 3)")
    parser.add_argument(
        "--minimal",
        choices=("auto", "always", "never"),
        default="auto",
        help="also measure against a minimal upstream: when the sandbox is the bottleneck (auto, the default), "
        "always or never",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the upstream and the client to two CPUs")
    parser.add_argument(
        "--out",
        default=display_path(str(DEFAULT_OUT)),
        help="results file whose upstream_transport section is replaced (default: bench/RESULTS.md; '-': stdout only)",
    )
    # The same file runs the client processes and the minimal upstream.
    parser.add_argument("--role", choices=("main", "client", "minimal"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=[c.key for c in CLIENTS], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--answer-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.seconds <= 0 or args.warmup < 0 or args.rounds < 1:
        parser.error("--concurrency and --rounds must be >= 1, --seconds > 0 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    roles = {"client": client_main, "minimal": minimal_main, "main": run}
    try:
        return exit_code("upstream_transport", lambda: roles[args.role](args))
    except Exception:
        if args.role == "main":
            raise
        traceback.print_exc()
        return 2


if __name__ == "__main__":
    sys.exit(main())
