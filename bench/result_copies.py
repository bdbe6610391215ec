"""Kept results under load (issue 23): the gateway's peak RSS while it copies 15 images of 4K size for N tasks at
once, the copy throughput, and the status and submit calls' latency while the copies run.

    .venv/bin/python bench/result_copies.py                       # ~1 minute; writes its section of RESULTS.md
    .venv/bin/python bench/result_copies.py --tasks 16 --image-mib 24

One sandbox upstream process whose result links point at this script's image server (each image `--image-mib` of
random bytes behind a PNG signature: a 4K photograph's size, incompressible), one fresh PostgreSQL database, one
`serve` process with the local store under a temporary directory. `--tasks` tasks of 15 images each are submitted at
once; once the sandbox completes them, every replica's copier (here: the one process, GATEWAY_RESULTS_COPY_CONCURRENCY
copies at a time) streams the 15 x N images into the store. VmRSS of the serve process is read every 10 ms
throughout. Status calls (a completed task, warm) and submits are timed before the tasks end (idle) and while the
copies run, one at a time, so each number is a single call's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
from aiohttp import web
from common import (
    DEFAULT_OUT,
    ROOT,
    BenchError,
    create_database,
    drop_database,
    exit_code,
    machine,
    plain_url,
    progress,
    versions,
    write_section,
)
from hot_path import Setup, add_database_url, git_describe, start_sandbox, upstream_env
from scale import vm_rss_mb

from tests.support.processes import free_port

SECTION = "result_copies"
IMAGES_PER_TASK = 15
SAMPLE_S = 0.01
NEW_FILE = "# Benchmark results\n"


@dataclass
class Sampler:
    """VmRSS of one process every SAMPLE_S, in a thread: its peak."""

    pid: int
    peak: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, vm_rss_mb(self.pid) or 0.0)
            time.sleep(SAMPLE_S)


class ImageServer:
    """Serves the same `size` random bytes (a PNG signature first) at any path, in 256 KiB writes."""

    def __init__(self, size: int) -> None:
        self.body = b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8)
        self.served = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png", "Content-Length": str(len(self.body))})
        await response.prepare(request)
        view = memoryview(self.body)
        for start in range(0, len(view), 256 * 1024):
            await response.write(view[start : start + 256 * 1024])
        await response.write_eof()
        self.served += 1
        return response


@dataclass
class Latency:
    status_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)


@dataclass
class Result:
    idle_mib: float
    peak_mib: float
    after_mib: float
    images: int
    kept: int
    bytes_kept: int
    copy_s: float
    idle: Latency
    busy: Latency


async def timed_calls(
    base: str, key: str, submitter: str, task_id: str, seconds: float, stop: asyncio.Event | None
) -> Latency:
    """Status calls on a completed task (`key`'s) and submits (`submitter`'s), alternating one at a time, for `seconds`
    (or until `stop`)."""
    out = Latency()
    headers = {"Authorization": f"Bearer {key}"}
    submits = {"Authorization": f"Bearer {submitter}"}
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as client:
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            started = time.perf_counter()
            r = await client.get(f"{base}/v1/images/generations/{task_id}", headers=headers)
            out.status_ms.append((time.perf_counter() - started) * 1000)
            if r.status_code != 200:
                raise BenchError(f"status answered {r.status_code}: {r.text[:200]}")
            started = time.perf_counter()
            r = await client.post(f"{base}/v1/images/generations", headers=submits, json={"prompt": "bench", "n": 1})
            out.submit_ms.append((time.perf_counter() - started) * 1000)
            if r.status_code != 200:
                raise BenchError(f"submit answered {r.status_code}: {r.text[:200]}")
    return out


async def until(check: Callable[[], Awaitable[bool]], step_s: float) -> None:
    while True:
        if await check():
            return
        await asyncio.sleep(step_s)


async def kept_counts(database_url: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'kept'), count(*), "
            "coalesce(sum(size) FILTER (WHERE state = 'kept'), 0) FROM kept_images"
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def serve_images(port: int, size: int) -> None:
    """The image server, as a process of its own (its CPU is not the timed client's)."""
    server = ImageServer(size)
    app = web.Application()
    app.router.add_get("/{tail:.*}", server.handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def scenario(
    args: argparse.Namespace, setup: Setup, database_url: str, sandbox_url: str, server_url: str
) -> Result:
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as probe:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                await probe.head(f"{server_url}/ready")
                break
            await asyncio.sleep(0.1)
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as client:
        r = await client.patch(
            f"{sandbox_url}/_control/config",
            json={"public_base_url": server_url, "task_seconds": args.task_seconds, "queue_seconds": 0.2},
        )
        r.raise_for_status()
    gateway = setup.serve(
        "serve-results",
        1,
        extra_env={
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_RESULTS_DIR": str(setup.workdir / "results"),
            "GATEWAY_RESULTS_ALLOW_PRIVATE": "true",
            "GATEWAY_RESULTS_POLL_INTERVAL_S": "0.5",
            "GATEWAY_POLL_INTERVAL_S": "0.5",
            **({} if args.max_mib_s is None else {"GATEWAY_RESULTS_COPY_MAX_MIB_S": str(args.max_mib_s)}),
        },
    )
    base = gateway.url
    admin = {"Authorization": f"Bearer {setup.env['GATEWAY_ADMIN_TOKEN']}"}
    async with httpx.AsyncClient(trust_env=False, timeout=60.0) as client:
        r = await client.post(f"{base}/admin/v1/tenants", headers=admin, json={"name": f"bench-{secrets.token_hex(3)}"})
        if r.status_code != 201:
            raise BenchError(f"creating a tenant answered {r.status_code}: {r.text[:300]}")
        key = r.json()["key"]["key"]
        headers = {"Authorization": f"Bearer {key}"}
        # The timed submits' tenant keeps no images: only the load's tasks are copied during the run.
        r = await client.post(
            f"{base}/admin/v1/tenants", headers=admin, json={"name": f"timing-{secrets.token_hex(3)}"}
        )
        timing = r.json()["key"]["key"]
        tenant_id = r.json()["id"]
        r = await client.put(
            f"{base}/admin/v1/tenants/{tenant_id}/images/retention", headers=admin, json={"retention_days": 0}
        )
        if r.status_code != 200:
            raise BenchError(f"setting retention answered {r.status_code}: {r.text[:300]}")
        # A completed task for the status calls, with results off for it (its one image copied before the run).
        r = await client.post(f"{base}/v1/images/generations", headers=headers, json={"prompt": "warm"})
        warm = r.json()["id"]

        async def warm_done() -> bool:
            answer = await client.get(f"{base}/v1/images/generations/{warm}", headers=headers)
            return bool(answer.json()["status"] == "completed") and (await kept_counts(database_url))[0] >= 1

        await until(warm_done, 0.2)
        idle_rss = vm_rss_mb(gateway.popen.pid) or 0.0
        progress(f"idle RSS {idle_rss:.0f} MiB; timing status and submit calls, idle")
        idle = await timed_calls(base, key, timing, warm, args.measure_s, None)
        # Let the idle phase's tasks (1 image each) be copied before the load.
        while True:
            kept, total, _ = await kept_counts(database_url)
            if total and kept == total:
                break
            await asyncio.sleep(0.2)
        kept_before, total_before, bytes_before = await kept_counts(database_url)
        sampler = Sampler(gateway.popen.pid)
        sampler.start()
        body = {"prompt": "bench 15", "n": IMAGES_PER_TASK}
        answers = await asyncio.gather(
            *(client.post(f"{base}/v1/images/generations", headers=headers, json=body) for _ in range(args.tasks))
        )
        bad = [a for a in answers if a.status_code != 200]
        if bad:
            raise BenchError(f"submit answered {bad[0].status_code}: {bad[0].text[:300]}")
        progress(f"{args.tasks} tasks of {IMAGES_PER_TASK} images submitted; waiting for their copies")
        wanted = total_before + args.tasks * IMAGES_PER_TASK

        async def all_ended() -> bool:  # the tasks end: their copies enqueued
            return bool((await kept_counts(database_url))[1] >= wanted)

        await until(all_ended, 0.05)
        copies_started = time.monotonic()
        stop = asyncio.Event()
        busy_calls = asyncio.ensure_future(timed_calls(base, key, timing, warm, args.timeout_s, stop))
        while True:
            kept, total, size = await kept_counts(database_url)
            if kept >= wanted:
                break
            if time.monotonic() - copies_started > args.timeout_s:
                raise BenchError(f"only {kept - kept_before} of {wanted - total_before} images kept in time")
            await asyncio.sleep(0.05)
        copy_s = time.monotonic() - copies_started
        stop.set()
        busy = await busy_calls
        await asyncio.sleep(args.settle)
        sampler.stop()
        after_rss = vm_rss_mb(gateway.popen.pid) or 0.0
        return Result(
            idle_mib=idle_rss,
            peak_mib=sampler.peak,
            after_mib=after_rss,
            images=wanted - total_before,
            kept=kept - kept_before,
            bytes_kept=size - bytes_before,
            copy_s=copy_s,
            idle=idle,
            busy=busy,
        )


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gw-result-copies-"))
    database_url = create_database(args.database_url, "gw_bench_results")
    sandbox = None
    setup: Setup | None = None
    images: subprocess.Popen[bytes] | None = None
    try:
        sandbox = start_sandbox(workdir)
        setup = Setup(workdir, ROOT, database_url, sandbox, upstream_env(sandbox))
        progress("migrate")
        setup.cli("migrate")
        port = free_port()
        images = subprocess.Popen(
            [sys.executable, __file__, "--serve-images", str(port), "--image-mib", str(args.image_mib)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        result = asyncio.run(scenario(args, setup, database_url, sandbox.url, f"http://127.0.0.1:{port}"))
    finally:
        if images is not None:
            images.terminate()
            images.wait(10)
        if setup is not None:
            for server in setup.servers:
                server.stop()
        if sandbox is not None:
            sandbox.stop()
        with contextlib.suppress(Exception):
            drop_database(database_url)
        shutil.rmtree(workdir, ignore_errors=True)
    section = render(args, result, time.monotonic() - started)
    print(section)
    if not args.no_write:
        write_section(Path(args.out), f"{SECTION}:{args.label}", section, NEW_FILE)
        progress(f"wrote {args.out}")
    return 0


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.1f}"


def render(args: argparse.Namespace, result: Result, took_s: float) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mib = result.bytes_kept / 1024 / 1024
    lines = [
        f"## Issue 23: result copies ({args.label}): {when}",
        "",
        f"- Command: `{' '.join(['bench/result_copies.py', *sys.argv[1:]])}` (took {took_s:.0f} s)",
        f"- Machine: {machine()}",
        f"- Software: gateway {git_describe(ROOT)}; " + versions("obstore", "httpx", "uvicorn"),
        f"- Load: {args.tasks} tasks of {IMAGES_PER_TASK} images submitted at once, each image {args.image_mib:g} MiB "
        "(random bytes behind a PNG signature: a 4K photograph's size), copied by one `serve` process "
        "(GATEWAY_RESULTS_COPY_CONCURRENCY at its default, 4; GATEWAY_RESULTS_COPY_MAX_MIB_S "
        f"{'at its default, 32' if args.max_mib_s is None else f'{args.max_mib_s:g} (0: no cap)'}) from a local "
        "HTTP server into the local store.",
        "",
        "| measure | value |",
        "|---|--:|",
        f"| images kept | {result.kept} of {result.images} ({mib:,.0f} MiB) |",
        f"| copy time, first task ended to last image kept | {result.copy_s:.1f} s |",
        f"| copy throughput | {mib / result.copy_s:,.0f} MiB/s, {result.kept / result.copy_s:.1f} images/s |",
        f"| serve RSS idle | {result.idle_mib:.0f} MiB |",
        f"| serve RSS peak while copying | {result.peak_mib:.0f} MiB |",
        f"| serve RSS after (settled {args.settle:g} s) | {result.after_mib:.0f} MiB |",
        "",
        "| call, one at a time | idle p50 ms | idle p99 ms | while copying p50 ms | while copying p99 ms | calls |",
        "|---|--:|--:|--:|--:|--:|",
        f"| status (completed task, warm) | {_ms(result.idle.status_ms, 0.5)} | {_ms(result.idle.status_ms, 0.99)} | "
        f"{_ms(result.busy.status_ms, 0.5)} | {_ms(result.busy.status_ms, 0.99)} | "
        f"{len(result.idle.status_ms)} / {len(result.busy.status_ms)} |",
        f"| submit | {_ms(result.idle.submit_ms, 0.5)} | {_ms(result.idle.submit_ms, 0.99)} | "
        f"{_ms(result.busy.submit_ms, 0.5)} | {_ms(result.busy.submit_ms, 0.99)} | "
        f"{len(result.idle.submit_ms)} / {len(result.busy.submit_ms)} |",
        "",
    ]
    if result.busy.status_ms and result.idle.status_ms:
        lines.insert(
            -1,
            f"- Status p50 while copying / idle: "
            f"{statistics.median(result.busy.status_ms) / statistics.median(result.idle.status_ms):.2f}x.",
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_database_url(parser)
    parser.add_argument("--label", default="current", help="names the section in the results file")
    parser.add_argument("--tasks", type=int, default=8, help="tasks of 15 images submitted at once (default 8)")
    parser.add_argument("--image-mib", type=float, default=12.0, help="size of each image, MiB (default 12)")
    parser.add_argument("--task-seconds", type=float, default=2.0, help="the sandbox's task duration (default 2)")
    parser.add_argument("--measure-s", type=float, default=5.0, help="idle phase of timed calls, s (default 5)")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="the copies' deadline, s (default 300)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the last copy (default 3)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results file (default bench/RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--max-mib-s", type=float, help="GATEWAY_RESULTS_COPY_MAX_MIB_S (default: the gateway's)")
    parser.add_argument("--serve-images", type=int, help=argparse.SUPPRESS)  # the image server's own process
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_images:
        serve_images(args.serve_images, int(args.image_mib * 1024 * 1024))
        return 0
    return exit_code(Path(sys.argv[0]).name, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
