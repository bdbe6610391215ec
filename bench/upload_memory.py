"""Resident memory of `serve --workers 2` under concurrent 10 MB uploads: each worker's peak, and what it keeps after.

    .venv/bin/python bench/upload_memory.py                 # ~1 minute; writes its section of RESULTS.md
    .venv/bin/python bench/upload_memory.py --checkout /tmp/old --label before   # another checkout's gateway
    .venv/bin/python bench/upload_memory.py --concurrency 32 --cap 16            # a bigger cap per worker

One sandbox upstream process, one fresh PostgreSQL database, one `serve --workers 2` (the Kubernetes manifests'
worker count). Rounds of `--concurrency` uploads of exactly 10 MB (the largest the contract allows) are sent at once,
each by its own tenant (so that no per-tenant bound refuses them), over fresh connections; the kernel hands each
connection to a worker. VmRSS of the serve parent, its workers and multiprocessing's resource tracker is read from
/proc every 10 ms throughout. The report gives each process's RSS idle (after a warm-up upload), its peak, and after
the last round (once the answers are in and `--settle` seconds have passed), and the same for the sum of all of
them, which is what the container's memory limit is held against (page cache of spooled files aside).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from common import (
    DEFAULT_OUT,
    ROOT,
    BenchError,
    all_processes,
    command_line,
    create_database,
    drop_database,
    exit_code,
    machine,
    progress,
    run_async,
    versions,
    write_section,
)
from hot_path import Setup, add_database_url, git_describe, start_sandbox, upstream_env
from scale import cmdline, vm_rss_mb

from app.contract import MAX_UPLOAD_BYTES

SECTION = "upload_memory"
WORKERS = 2
SAMPLE_S = 0.01
# What deploy/kubernetes/deployment.yaml sets for GATEWAY_WORKERS=2 (the report compares against it).
MANIFEST_LIMIT_MIB = 768
NEW_FILE = "# Benchmark results\n"


def image(size: int) -> bytes:
    """`size` bytes that sniff as a PNG: the signature, then random bytes (nothing compresses or dedups them)."""
    head = b"\x89PNG\r\n\x1a\n"
    return head + os.urandom(size - len(head))


@dataclass
class Sampler:
    """VmRSS of the serve parent and every descendant, every SAMPLE_S, in a thread: the peak of each, and of the sum."""

    parent: int
    peaks: dict[int, float] = field(default_factory=dict)
    peak_total: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def processes(self) -> dict[int, float]:
        """VmRSS of the serve parent and its children (the workers and multiprocessing's resource tracker)."""
        pids = [self.parent, *(pid for pid, (ppid, _, _) in all_processes().items() if ppid == self.parent)]
        found = {}
        for pid in pids:
            mb = vm_rss_mb(pid)
            if mb is not None:
                found[pid] = mb
        return found

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        pids = list(self.processes())  # the process set is fixed once serve is up; reading /proc for it is costly
        while not self._stop.is_set():
            total = 0.0
            for pid in pids:
                mb = vm_rss_mb(pid)
                if mb is None:
                    continue
                total += mb
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), mb)
            self.peak_total = max(self.peak_total, total)
            time.sleep(SAMPLE_S)


@dataclass
class Outcome:
    statuses: Counter[int]
    seconds: float


async def upload_round(base: str, keys: Sequence[str], body: bytes, concurrency: int) -> Outcome:
    """`concurrency` uploads at once, the i-th by keys[i], each on a fresh connection; their statuses."""
    started = time.monotonic()
    statuses: Counter[int] = Counter()

    async def one(key: str) -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(120.0)) as client:
            response = await client.post(
                f"{base}/v1/uploads/images",
                headers={"Authorization": f"Bearer {key}"},
                files={"file": ("bench.png", body, "image/png")},
            )
            statuses[response.status_code] += 1

    await asyncio.gather(*(one(keys[i % len(keys)]) for i in range(concurrency)))
    return Outcome(statuses, time.monotonic() - started)


async def make_tenants(base: str, admin_token: str, count: int) -> list[str]:
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as client:
        keys = []
        for i in range(count):
            response = await client.post(
                f"{base}/admin/v1/tenants",
                headers={"Authorization": f"Bearer {admin_token}"},
                json={"name": f"bench-upload-{i}-{secrets.token_hex(3)}"},
            )
            if response.status_code != 201:
                raise BenchError(f"creating a tenant answered {response.status_code}: {response.text[:300]}")
            keys.append(response.json()["key"]["key"])
        return keys


def reset_sandbox(url: str) -> None:
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        client.post(f"{url}/_control/reset").raise_for_status()


@dataclass
class Result:
    idle: dict[int, float]
    peaks: dict[int, float]
    after: dict[int, float]
    peak_total: float
    names: dict[int, str]
    rounds: list[Outcome]


def run(args: argparse.Namespace) -> int:
    checkout = Path(args.checkout).resolve() if args.checkout else ROOT
    if not (checkout / "app" / "cli").exists():
        raise BenchError(f"{checkout} is not a checkout of the gateway (no app/cli)")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gw-upload-memory-"))
    database_url = create_database(args.database_url, "gw_bench_upload")
    sandbox = None
    setup: Setup | None = None
    try:
        sandbox = start_sandbox(workdir)
        env = upstream_env(sandbox)
        setup = Setup(workdir, checkout, database_url, sandbox, env)
        progress(f"gateway of {checkout}: migrate")
        setup.cli("migrate")
        extra = {"GATEWAY_LOG_LEVEL": "warning"}
        if args.cap is not None:
            extra["GATEWAY_MAX_CONCURRENT_UPLOADS"] = str(args.cap)
        gateway = setup.serve("serve-uploads", WORKERS, extra_env=extra)
        keys = run_async(make_tenants(gateway.url, env["GATEWAY_ADMIN_TOKEN"], args.concurrency))
        body = image(MAX_UPLOAD_BYTES)
        sampler = Sampler(gateway.popen.pid)
        # Warm-up: a few small uploads, so that every worker has imported and run the upload path once.
        run_async(upload_round(gateway.url, keys, image(64 * 1024), 2 * WORKERS))
        time.sleep(1.0)
        idle = sampler.processes()
        names = {pid: _name(pid, gateway.popen.pid) for pid in idle}
        sampler.start()
        rounds = []
        try:
            for index in range(args.rounds):
                outcome = run_async(upload_round(gateway.url, keys, body, args.concurrency))
                rounds.append(outcome)
                progress(f"round {index + 1}: {dict(sorted(outcome.statuses.items()))} in {outcome.seconds:.1f} s")
                reset_sandbox(sandbox.url)
            time.sleep(args.settle)
        finally:
            sampler.stop()
        after = sampler.processes()
        result = Result(idle, dict(sampler.peaks), after, sampler.peak_total, names, rounds)
    finally:
        if setup is not None:
            for server in setup.servers:
                server.stop()
        if sandbox is not None:
            sandbox.stop()
        with contextlib.suppress(Exception):
            drop_database(database_url)
        shutil.rmtree(workdir, ignore_errors=True)
    section = render(args, checkout, result, time.monotonic() - started)
    print(section)
    if not args.no_write:
        write_section(Path(args.out), f"{SECTION}:{args.label}", section, NEW_FILE)
        progress(f"wrote {args.out}")
    return 0


def _name(pid: int, parent: int) -> str:
    if pid == parent:
        return "serve (supervisor)"
    return "resource tracker" if "resource_tracker" in cmdline(pid) else "worker"


def render(args: argparse.Namespace, checkout: Path, result: Result, took_s: float) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    statuses: Counter[int] = Counter()
    for outcome in result.rounds:
        statuses.update(outcome.statuses)
    cap = args.cap if args.cap is not None else "default"
    lines = [
        f"## Upload memory ({args.label}): {when}",
        "",
        f"- Command: `{command_line()}` (took {took_s:.0f} s)",
        f"- Machine: {machine()}",
        f"- Software: gateway {git_describe(checkout)}; "
        + versions("fastapi", "starlette", "uvicorn", "httpx", "aiohttp", "python-multipart"),
        f"- Load: {args.rounds} rounds of {args.concurrency} concurrent uploads of {MAX_UPLOAD_BYTES:,} bytes, one "
        f"tenant each, against `serve --workers {WORKERS}` (GATEWAY_MAX_CONCURRENT_UPLOADS={cap}); answers: "
        + ", ".join(f"{n}x HTTP {code}" for code, n in sorted(statuses.items()))
        + "; seconds per round: "
        + ", ".join(f"{o.seconds:.1f}" for o in result.rounds),
        "",
        "| process | idle MiB | peak MiB | after MiB (settled) |",
        "|---|--:|--:|--:|",
    ]
    order = sorted(result.idle, key=lambda pid: (result.names[pid] != "worker", pid))
    for pid in order:
        lines.append(
            f"| {result.names[pid]} | {result.idle[pid]:.0f} | {result.peaks.get(pid, result.idle[pid]):.0f} | "
            f"{result.after.get(pid, float('nan')):.0f} |"
        )
    total_idle = sum(result.idle.values())
    total_after = sum(result.after.values())
    lines += [
        f"| **all of them** | {total_idle:.0f} | {result.peak_total:.0f} | {total_after:.0f} |",
        "",
        f"- Peak of the sum against the manifests' {MANIFEST_LIMIT_MIB} MiB limit: {result.peak_total:.0f} MiB "
        f"({'within' if result.peak_total < MANIFEST_LIMIT_MIB else 'OVER'} it).",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_database_url(parser)
    parser.add_argument("--checkout", help="measure the gateway of another checkout (e.g. a git worktree)")
    parser.add_argument("--label", default="current", help="names the section in the results file")
    parser.add_argument("--concurrency", type=int, default=16, help="uploads at once per round (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of uploads (default 3)")
    parser.add_argument("--cap", type=int, help="GATEWAY_MAX_CONCURRENT_UPLOADS (default: the gateway's)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the last round (default 5)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results file (default bench/RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_code(Path(sys.argv[0]).name, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
