"""Two gateway configurations side by side, measured in alternating slices of a few seconds: an A/B comparison that
a shared machine's drift cannot tilt.

`hot_path.py --variant` measures one configuration's rows, then the other's, each on a freshly started server; on two
shared cores its rounds differ by more than the 5 % issue 10 allows. Here both gateways run at once on the same ledger
(one worker each, the same sandbox), and wrk drives them in turn, `--slice` seconds at a time, the order reversed every
other pair, so whatever the machine does in a minute weighs on both alike. Both are restarted `--restarts` times so a
process's own luck (memory layout, where its threads land) is averaged too.

Rows (status only: the rows whose throughput the 5 % is about): status of a completed task at c=16 and c=1, status of
an open task at c=1. Per row and configuration: requests over seconds summed across slices, and the ratio of each
slice pair (its median and quartiles: the spread of the noise).

    .venv/bin/python bench/ab_slices.py [--slices 8] [--slice 3] [--restarts 2] \\
        --variant unobserved:GATEWAY_METRICS_ENABLED=false --variant observed:GATEWAY_LOG_FORMAT=json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    DEFAULT_OUT,
    BenchError,
    Server,
    command_line,
    create_database,
    drop_database,
    exit_code,
    machine,
    progress,
    shown_url,
    versions,
)
from hot_path import (
    Setup,
    Target,
    add_database_url,
    calibrate,
    cpu_of,
    git_describe,
    parse_variant,
    prepare_ledger,
    start_sandbox,
    upstream_env,
    wrk,
    wrk_version,
)

ROWS = (("status of a completed task", 16), ("status of a completed task", 1), ("status of an open task", 1))


@dataclass
class Slices:
    requests: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return sum(self.requests) / sum(self.seconds) if self.seconds else float("nan")


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (Debian: apt-get install wrk)")
    if len(args.variant) != 2:
        raise BenchError("give exactly two --variant: the reference first")
    started = time.monotonic()
    calibration = calibrate()
    workdir = Path(tempfile.mkdtemp(prefix="gw-ab-slices-"))
    database_url = create_database(args.database_url, "gw_bench_ab")
    sandbox: Server | None = None
    setup: Setup | None = None
    found: dict[tuple[str, int, str], Slices] = {}
    try:
        sandbox = start_sandbox(workdir)
        env = upstream_env(sandbox)
        setup = Setup(workdir, Path(__file__).resolve().parents[1], database_url, sandbox, env)
        ledger = prepare_ledger(setup, database_url)
        setup.tenant_key, tasks = ledger.tenant_key, ledger.tasks
        ids = {"status of a completed task": tasks.completed, "status of an open task": tasks.open}
        names = [name for name, _ in args.variant]
        for restart in range(1, args.restarts + 1):
            gateways = {
                name: setup.serve(f"serve-{name}-{restart}", 1, extra_env=variant_env)
                for name, variant_env in args.variant
            }
            progress(f"start {restart}/{args.restarts}: {', '.join(names)} running side by side")
            try:
                for row, c in ROWS:
                    targets = {
                        name: Target(row, "GET", f"{gw.url}/v1/images/generations/{ids[row]}", setup.tenant_key)
                        for name, gw in gateways.items()
                    }
                    for name in names:  # warm both
                        wrk(targets[name], c, args.warmup, workdir)
                    for pair in range(args.slices):
                        order = names if (pair + restart) % 2 == 0 else names[::-1]
                        for name in order:
                            cpu: dict[str, float] = {}
                            with cpu_of({"gateway": [gateways[name].popen.pid]}, cpu):
                                result = wrk(targets[name], c, args.slice, workdir)
                            if result["non2xx"] or result["socket_errors"]:
                                raise BenchError(f"{name}: {row} c={c} answered errors: {result}")
                            got = found.setdefault((row, c, name), Slices())
                            got.requests.append(int(result["requests"]))
                            got.seconds.append(result["duration_us"] / 1e6)
                            got.cpu_s.append(cpu.get("gateway", 0.0))
                    progress(
                        f"  {row} c={c}: "
                        + ", ".join(f"{name} {found[(row, c, name)].rps:,.0f} req/s" for name in names)
                        + " (so far)"
                    )
            finally:
                for gw in gateways.values():
                    gw.stop()
    finally:
        for server in [*(setup.servers if setup else []), sandbox]:
            if server is not None:
                server.stop()
        if not args.keep:
            drop_database(database_url)
            shutil.rmtree(workdir, ignore_errors=True)
    report = render(args, found, calibration, time.monotonic() - started)
    print(report)
    if args.out != "-":
        out = Path(args.out)
        out.write_text(out.read_text().rstrip() + "\n\n" + report if out.exists() else report)
        progress(f"appended to {out}")
    return 0


def render(
    args: argparse.Namespace, found: dict[tuple[str, int, str], Slices], calibration: float, elapsed: float
) -> str:
    (reference, reference_env), (other, other_env) = args.variant
    lines = [
        f"## A/B in alternating slices ({reference} vs {other}): {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- Command: `{command_line()}` (took {elapsed:.0f} s)",
        f"- Gateway: {git_describe(Path(__file__).resolve().parents[1])}",
        f"- Machine: {machine()}; CPU calibration: a fixed Python loop took {calibration:.1f} ms (lower is faster)",
        f"- Software: wrk {wrk_version()}, PostgreSQL at {shown_url(args.database_url)}, "
        + versions("fastapi", "uvicorn", "sqlalchemy", "orjson", "prometheus-client"),
        f"- `{reference}`: {reference_env or 'defaults'}; `{other}`: {other_env or 'defaults'}. Both `serve` (one "
        f"worker each) run side by side on one ledger and sandbox; per row {args.slices} pairs of {args.slice:g} s "
        f"slices of `wrk -t1`, the order reversed every other pair, after {args.warmup:g} s of warm-up each; both "
        f"restarted {args.restarts} time(s).",
        "",
        f"| operation | c | {reference} req/s | {other} req/s | {other} / {reference} | per-pair ratio: median "
        f"(quartiles) | {other} / {reference} gateway CPU per request |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row, c in ROWS:
        a, b = found.get((row, c, reference)), found.get((row, c, other))
        if a is None or b is None:
            continue
        pairs = sorted(
            (rb / sb) / (ra / sa)
            for ra, sa, rb, sb in zip(a.requests, a.seconds, b.requests, b.seconds, strict=True)
            if ra and rb
        )
        quartiles = statistics.quantiles(pairs, n=4) if len(pairs) >= 2 else [pairs[0]] * 3
        cpu_a = sum(a.cpu_s) / sum(a.requests)
        cpu_b = sum(b.cpu_s) / sum(b.requests)
        lines.append(
            f"| {row} | {c} | {a.rps:,.0f} | {b.rps:,.0f} | {b.rps / a.rps:.3f}x | {statistics.median(pairs):.3f}x "
            f"({quartiles[0]:.3f}-{quartiles[2]:.3f}) | {cpu_b / cpu_a:.3f}x |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_url(parser, "its own database")
    parser.add_argument(
        "--variant", type=parse_variant, action="append", required=True, help="NAME:GATEWAY_X=value,... (twice)"
    )
    parser.add_argument("--slices", type=int, default=8, help="slice pairs per row and start (default 8)")
    parser.add_argument("--slice", type=float, default=3.0, help="seconds per slice (default 3)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per row and gateway (default 2)")
    parser.add_argument("--restarts", type=int, default=2, help="starts of both gateways (default 2)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results file to append to, or - for stdout only")
    parser.add_argument("--keep", action="store_true", help="keep the database and the work directory")
    args = parser.parse_args(argv)
    if args.slices < 1 or args.restarts < 1 or args.slice <= 0:
        parser.error("--slices and --restarts must be at least 1, --slice positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_code("ab_slices", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
