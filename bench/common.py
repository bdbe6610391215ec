"""What the benchmark scripts share: their servers' processes, the run's plumbing and the report's pieces.

The scripts run as `.venv/bin/python bench/<script>.py`, which puts this folder first on sys.path: `from common import`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
DEFAULT_OUT = ROOT / "bench" / "RESULTS.md"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0

T = TypeVar("T")


class BenchError(RuntimeError):
    """The benchmark cannot run; the message says why, in one or a few lines."""


# --- processes --------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port of HOST that is free now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**settings: str) -> dict[str, str]:
    """The inherited environment without GATEWAY_*/SANDBOX_* settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "SANDBOX_"))}
    env.update(PYTHONUNBUFFERED="1", **settings)
    return env


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log file, for error messages."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "<no log>"


@dataclass
class Server:
    """A server process of the command line, in its own process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL if it has not exited after STOP_TIMEOUT_S."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(STOP_TIMEOUT_S)


def start_server(
    name: str,
    command: list[str],
    env: Mapping[str, str],
    workdir: Path,
    port: int,
    preexec_fn: Callable[[], None] | None = None,
) -> Server:
    """Start `command --port PORT` in a new session in workdir, its output to `workdir/<name>.log`; no waiting."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [*command, "--port", str(port)],
            env=dict(env),
            cwd=workdir,  # no stray .env file of the checkout is read, no ./data is created
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
    return Server(name, popen, log_path, f"http://{HOST}:{port}")


def wait_ready(server: Server, path: str) -> None:
    """Poll GET path until HTTP 200; BenchError with the log tail if the server exits or READY_TIMEOUT_S passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while True:
            code = server.popen.poll()
            if code is not None:
                raise BenchError(f"{server.name} exited with {code}; log tail:\n{tail(server.log_path)}")
            try:
                response = client.get(server.url + path)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{server.name} did not answer GET {path} in {READY_TIMEOUT_S:.0f} s ({last}); log tail:\n"
                    f"{tail(server.log_path)}"
                )
            time.sleep(0.05)


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
