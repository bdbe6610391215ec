"""What the benchmark scripts share: their servers' processes, the run's plumbing and the report's pieces.

The scripts run as `.venv/bin/python bench/<script>.py`, which puts this folder first on sys.path: `from common import`.
The process plumbing itself (ports, environment, start, readiness, stop, log tails) is tests/support/processes.py,
shared with the end-to-end tests; this module adapts it to the benchmarks' names, timeouts and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

# The process plumbing lives in the checkout's tests/support/ (the e2e tests use it too), but running a script puts
# bench/ on sys.path, not the checkout: add it, after bench/ so that `common` and the scripts' names still come first.
if (_checkout := str(Path(__file__).resolve().parents[1])) not in sys.path:
    sys.path.insert(1, _checkout)

from tests.support.processes import HOST as HOST
from tests.support.processes import NotReady, Process, log_tail, start_process, wait_until_ready
from tests.support.processes import clean_env as clean_env
from tests.support.processes import free_port as free_port

ROOT = Path(_checkout)
DEFAULT_OUT = ROOT / "bench" / "RESULTS.md"
READY_TIMEOUT_S = 30.0
TAIL_CHARS = 3000
CLI_TIMEOUT_S = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

T = TypeVar("T")

Server = Process
"""A server process of the command line, in its own process group (`.url`, `.popen`, `.log_path`, `.stop()`)."""


class BenchError(RuntimeError):
    """The benchmark cannot run; the message says why, in one or a few lines."""


# --- processes --------------------------------------------------------------------------------------------------


def tail(path: Path, chars: int = TAIL_CHARS) -> str:
    """The end of a log file, for error messages."""
    return log_tail(path, chars)


def start_server(
    name: str,
    command: list[str],
    env: Mapping[str, str],
    workdir: Path,
    port: int,
    preexec_fn: Callable[[], None] | None = None,
) -> Server:
    """Start `command --port PORT` in a new session in workdir, its output to `workdir/<name>.log`; no waiting."""
    return start_process(
        name,
        [*command, "--port", str(port)],
        env,
        cwd=workdir,  # no stray .env file of the checkout is read, no ./data is created
        log_path=workdir / f"{name}.log",
        base_url=f"http://{HOST}:{port}",
        preexec_fn=preexec_fn,
    )


def wait_ready(server: Server, path: str) -> None:
    """Poll GET path until HTTP 200; BenchError with the log tail if the server exits or READY_TIMEOUT_S passes."""
    try:
        wait_until_ready(server, server.url + path, READY_TIMEOUT_S, tail_chars=TAIL_CHARS)
    except NotReady as e:
        raise BenchError(str(e)) from None


# --- the run ----------------------------------------------------------------------------------------------------


def exit_code(script: str, body: Callable[[], int]) -> int:
    """body()'s exit code; a BenchError is printed as `script: message` and gives 2, Ctrl-C gives 130."""
    try:
        return body()
    except BenchError as e:
        print(f"{script}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def progress(message: str) -> None:
    """A timestamped line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed, as under uvicorn (loop="auto"): a lighter load generator."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks of an already sorted sequence; NaN for no data."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- report -----------------------------------------------------------------------------------------------------


def cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine() -> str:
    """CPU model, cores, RAM, OS and Python of this machine, for the report's header."""
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{cpu}, {cores()} cores, {ram} RAM, {platform.platform(terse=True)}, {python}"


def versions(*names: str) -> str:
    """`name version` of each installed distribution among names, comma-separated."""
    found = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


def display_path(path: str) -> str:
    """The path relative to the working directory when it is below it, else as given."""
    with contextlib.suppress(ValueError):
        return str(Path(path).absolute().relative_to(Path.cwd()))
    return path


def command_line() -> str:
    """This process's command line, shell-quoted, with paths shown as display_path does."""
    return shlex.join([display_path(sys.executable), display_path(sys.argv[0]), *sys.argv[1:]])


def markers(name: str) -> tuple[str, str]:
    """The comment lines that open and close the generated section `name` of a results file."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(path: Path, name: str, section: str, new_file: str) -> None:
    """Replace section `name` between its markers, or append it (to new_file's text if path is missing)."""
    begin, end = markers(name)
    text = path.read_text() if path.exists() else new_file
    block = f"{begin}\n{section}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, after = rest.split(end, 1)
        text = head + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- commands, databases and CPU time (moved here to be shared by the benchmarks) ---------------------------


def cli_command() -> list[str]:
    """The console script next to this interpreter (`.venv/bin/seedream-gateway`), else `python -m app.cli`."""
    script = Path(sys.executable).parent / "seedream-gateway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def run_cli(args: list[str], env: Mapping[str, str], workdir: Path) -> str:
    """Run a one-shot command of the command line; its stdout, or BenchError with its stderr."""
    try:
        done = subprocess.run(
            [*cli_command(), *args],
            env=dict(env),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"`seedream-gateway {shlex.join(args)}` did not finish in {CLI_TIMEOUT_S:.0f} s") from e
    if done.returncode != 0:
        raise BenchError(f"`seedream-gateway {shlex.join(args)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def last_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.lstrip().startswith("{"):
            value: dict[str, Any] = json.loads(line)
            return value
    raise BenchError(f"no JSON object in the command's output: {stdout!r}")


def asyncpg_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def plain_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def database_name(url: str) -> str:
    return make_url(url).database or ""


async def pg_execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(plain_url(url), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(server_url: str, prefix: str) -> str:
    name = f"{prefix}_{secrets.token_hex(4)}"
    asyncio.run(pg_execute(server_url, f'CREATE DATABASE "{name}"'))
    return asyncpg_url(make_url(server_url).set(database=name).render_as_string(hide_password=False))


def drop_database(url: str) -> None:
    parsed = make_url(url)
    server = parsed.set(database="postgres").render_as_string(hide_password=False)
    asyncio.run(pg_execute(server, f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))


def proc_stat(pid: int) -> tuple[int, float, str] | None:
    """(parent pid, CPU seconds user+system, command name) of a process, None when it is gone or unreadable."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = data[data.index("(") + 1 : data.rindex(")")]
    rest = data[data.rindex(")") + 2 :].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / CLOCK_TICKS, comm


def all_processes() -> dict[int, tuple[int, float, str]]:
    found = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = proc_stat(int(entry.name))
                if stat is not None:
                    found[int(entry.name)] = stat
    return found


def machine_busy() -> float | None:
    """CPU seconds spent by all cores outside idle and I/O wait since boot."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS
