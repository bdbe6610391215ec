"""What observability costs per request, measured in-process where the machine's noise cannot hide it.

The hot-path benchmark (bench/hot_path.py, `--variant`) compares whole servers under wrk; on a shared two-core
machine its rounds differ by more than the 5 % that issue 10 allows, so it cannot tell 2 % from 6 %. This script
measures the difference itself: the gateway's outermost middleware (app/core/observe.py: request id, access line,
HTTP metrics) around an app that answers as the status fast path does, once with metrics off and text lines (the
reference) and once with metrics on and JSON lines, through the process's real logging setup (the batching handler
writing to a file). On the status path nothing else differs between the two configurations: the fast path answers
before routing, so the `/metrics` route is never looked at.

Batches of each configuration alternate (the order reversed every other pair); the medians of microseconds per
request are reported, with their difference. Given the gateway's CPU per request under wrk (`--cpu-per-request-ms`,
the "CPU ms/req" column of the hot-path run), the difference is also turned into the throughput ratio it implies.

    .venv/bin/python bench/observe_cost.py [--batches 20] [--requests 20000] [--cpu-per-request-ms 0.10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import DEFAULT_OUT, command_line, exit_code, machine, progress, run_async, versions

from app.core import context, logs, metrics
from app.core.observe import Observe

TASK_ID = "task_img_01JDZ8W4Q9R2M7X3K5T6V8Y0AB"
PATH = f"/v1/images/generations/{TASK_ID}"
# What the fast path sends for a completed task: a JSON body of about this size and its headers.
BODY = (
    b'{"id":"' + TASK_ID.encode() + b'","object":"generation.task","model":"doubao-seedream-4-0-250828",'
    b'"status":"completed","progress":100,"created_at":1764345600,"completed_at":1764345612,'
    b'"result":{"data":[{"url":"https://files.example.com/images/0123456789abcdef.png?token=redacted"}]}}'
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
CONFIGURATIONS = {"unobserved": (False, "text"), "observed": (True, "json")}


async def fast_path_like(scope: Any, receive: Any, send: Any) -> None:
    """Answers as app/tasks/fast_path.py does for a warm completed task: the tenant known, one JSON body."""
    current = context.current()
    if current is not None:
        current.tenant_id = "ten_01JDZ8W4Q9R2M7X3K5T6V8Y0AB"
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"authorization", b"Bearer sk-tenant"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


@contextlib.contextmanager
def gateway_logging(directory: Path) -> Iterator[logs.BatchingStreamHandler]:
    """The process's logging as `serve` sets it up (logs.setup_logging), its one handler writing to a file."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    with open(directory / "access.log", "wb") as sink:
        handler = logs.BatchingStreamHandler(sink.fileno(), piped=False)
        root.handlers[:] = [handler]
        logs.setup_logging("info", "text")
        try:
            yield handler
        finally:
            handler.flush()
            root.handlers[:], root.level = saved


def configure(name: str, handler: logging.Handler) -> None:
    enabled, log_format = CONFIGURATIONS[name]
    metrics.configure(max_tenants=100, enabled=enabled)
    handler.setFormatter(logs.formatter(log_format))


async def batch(app: Observe, requests: int) -> float:
    """Microseconds per request over one batch."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    template = scope()
    started = time.perf_counter()
    for _ in range(requests):
        await app(dict(template), receive, send)
    return (time.perf_counter() - started) / requests * 1e6


async def measure(batches: int, requests: int, handler: logging.Handler) -> dict[str, list[float]]:
    app = Observe(fast_path_like)
    names = list(CONFIGURATIONS)
    for name in names:  # warm-up: caches, the clock texts, the metrics' label children
        configure(name, handler)
        await batch(app, requests // 4)
    found: dict[str, list[float]] = {name: [] for name in names}
    for pair in range(batches):
        for name in names if pair % 2 == 0 else reversed(names):
            configure(name, handler)
            found[name].append(await batch(app, requests))
        await asyncio.sleep(0)  # the handler's flush timer
        progress(
            f"pair {pair + 1}/{batches}: " + ", ".join(f"{name} {found[name][-1]:.2f} us/request" for name in names)
        )
    return found


def report(found: dict[str, list[float]], requests: int, cpu_per_request_ms: float | None, took: float) -> str:
    reference, observed = (statistics.median(found[name]) for name in CONFIGURATIONS)
    pairs = [o - r for r, o in zip(found["unobserved"], found["observed"], strict=True)]
    added = statistics.median(pairs)
    lines = [
        f"## Observability cost in-process: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- Command: `{command_line()}` (took {took:.0f} s)",
        f"- Machine: {machine()}",
        f"- Versions: {versions('orjson', 'prometheus-client', 'starlette', 'uvloop')}",
        f"- {len(pairs)} pairs of batches of {requests:,} requests through app/core/observe.py around an app that "
        "answers as the status fast path does; logging as `serve` sets it up, to a file.",
        "",
        "| configuration | us/request (median) | lowest | highest |",
        "|---|--:|--:|--:|",
    ]
    for name, (enabled, log_format) in CONFIGURATIONS.items():
        values = found[name]
        label = f"{name} (metrics {'on' if enabled else 'off'}, {log_format} lines)"
        lines.append(f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    lines += [
        "",
        f"Added per request by metrics and JSON lines: {added:.2f} us (median of the pairs' differences; "
        f"{min(pairs):.2f} to {max(pairs):.2f}); observed / unobserved in-process: {observed / reference:.2f}x.",
    ]
    if cpu_per_request_ms is not None:
        total_us = cpu_per_request_ms * 1000
        lines.append(
            f"With the gateway's CPU per status request under wrk at {cpu_per_request_ms:.3f} ms (unobserved), "
            f"that is a throughput ratio of {total_us / (total_us + added):.3f}x (goal: at least 0.95x)."
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20, help="pairs of batches (default: 20)")
    parser.add_argument("--requests", type=int, default=20_000, help="requests per batch (default: 20,000)")
    parser.add_argument(
        "--cpu-per-request-ms",
        type=float,
        default=None,
        help="the gateway's CPU per status request under wrk, unobserved (hot_path.py's CPU ms/req column)",
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results file to append to, or - for stdout only")
    args = parser.parse_args()
    if args.batches < 1 or args.requests < 100:
        parser.error("--batches must be at least 1 and --requests at least 100")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="observe-cost-") as directory, gateway_logging(Path(directory)) as handler:
        found = run_async(measure(args.batches, args.requests, handler))
    text = report(found, args.requests, args.cpu_per_request_ms, time.monotonic() - started)
    print(text)
    if args.out != "-":
        with open(args.out, "a", encoding="utf-8") as results:
            results.write("\n" + text)
        progress(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code("observe_cost", main))
