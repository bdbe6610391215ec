"""Server processes of the project's command line, run for real: the one place for their plumbing.

A server is started in its own session (process group) with its output in a log file, waited for by polling an HTTP
URL against a deadline, and stopped as a group (SIGTERM, then SIGKILL). Used by the end-to-end tests
(tests/e2e/conftest.py) and by the benchmark scripts (bench/common.py), so nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 5.0
POLL_STEP_S = 0.05
TAIL_CHARS = 4000


class NotReady(RuntimeError):
    """A server exited, or did not answer in time; the message says which and ends with the tail of its log."""


def free_port() -> int:
    """A TCP port of HOST (the loopback interface) that is free right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**settings: str) -> dict[str, str]:
    """The inherited environment without any GATEWAY_ or SANDBOX_ setting, with unbuffered Python, plus settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "SANDBOX_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def log_tail(path: Path, chars: int = TAIL_CHARS) -> str:
    """The end of a log file, for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "<no log>"
    return text[-chars:]


def kill_group(popen: subprocess.Popen[Any]) -> None:
    """SIGKILL to the process group of a process started in its own session (gone already: nothing)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)


@dataclass
class Process:
    """A server process of the command line, in its own process group, its output in log_path."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    base_url: str

    @property
    def url(self) -> str:
        """The base URL (the benchmarks' name for it)."""
        return self.base_url

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = TAIL_CHARS) -> str:
        return log_tail(self.log_path, chars)

    def stop(self) -> int | None:
        """SIGTERM to its process group, SIGKILL if it has not exited after STOP_TIMEOUT_S; the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                kill_group(self.popen)
                self.popen.wait(STOP_TIMEOUT_S)
        return self.popen.returncode


def start_process(
    name: str,
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: Path,
    log_path: Path,
    base_url: str,
    preexec_fn: Callable[[], None] | None = None,
) -> Process:
    """Launch command in a new session in cwd, stdin closed, stdout and stderr to log_path (overwritten); no waiting."""
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
    return Process(name, popen, log_path, base_url)


def wait_until_ready(process: Process, url: str, timeout_s: float, *, tail_chars: int = TAIL_CHARS) -> None:
    """Poll GET url until it answers 200.

    NotReady, with the log tail, if the process exits first, or if timeout_s passes (the process is stopped then).
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while True:
            code = process.popen.poll()
            if code is not None:
                raise NotReady(
                    f"{process.name} exited with {code} before GET {url} answered; log tail:\n"
                    f"{process.tail(tail_chars)}"
                )
            try:
                response = client.get(url)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            if time.monotonic() > deadline:
                process.stop()
                raise NotReady(
                    f"{process.name} did not answer GET {url} within {timeout_s:g} s ({last}); log tail:\n"
                    f"{process.tail(tail_chars)}"
                )
            time.sleep(POLL_STEP_S)
