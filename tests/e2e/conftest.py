"""End-to-end harness: the project's own command line run as real OS processes on real sockets.

Every server is started in its own session (process group), logs to a file under the test's tmp dir, is waited
for by polling an HTTP URL against a deadline, and is always stopped (SIGTERM, then SIGKILL) in teardown. That
plumbing is tests/support/processes.py (the benchmarks use it too); this module adds the fixtures, timeouts and names.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.databases import create_postgres_database, drop_postgres_database, truncate_all
from tests.support.processes import (
    HOST,
    STOP_TIMEOUT_S,
    TAIL_CHARS,
    NotReady,
    Process,
    clean_env,
    free_port,
    kill_group,
    start_process,
    wait_until_ready,
)
from tests.support.processes import POLL_STEP_S as POLL_STEP_S

CLI: list[str] = [sys.executable, "-m", "app.cli"]
# Deadlines, not expectations: a process start or a CLI command is seconds of imports, and on a CI machine whose cores
# are busy with the other test worker and another job it has taken more than 20 s. A deadline costs time only when
# something is broken.
READY_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0

UPSTREAM_KEY = "sk-e2e-upstream-0123456789"
# Fast sandbox timings: a task is queued for 0.2 s and terminal after 1.5 s.
FAST_SANDBOX = {"SANDBOX_TASK_SECONDS": "1.5", "SANDBOX_QUEUE_SECONDS": "0.2"}
FAST_REFRESH = {"GATEWAY_STATUS_REFRESH_INTERVAL_S": "0.2"}


def base_env(**overrides: str) -> dict[str, str]:
    """The inherited environment without any GATEWAY_ or SANDBOX_ setting, plus fast sandbox timings."""
    return clean_env(**{**FAST_SANDBOX, **overrides})


def http_client(**kwargs: Any) -> httpx.AsyncClient:
    """A client that ignores proxy settings of the environment (everything here is on loopback).

    The connect timeout is long: on loopback a connect is slow only when the machine is starved, and a crowd of new
    connections (the quota race's hundred pollers) took more than 5 s on a loaded two-core CI machine. A gateway that
    hangs is still caught by the read timeout."""
    kwargs.setdefault("timeout", httpx.Timeout(15.0, connect=30.0))
    return httpx.AsyncClient(trust_env=False, headers={"User-Agent": "gateway-e2e/1"}, **kwargs)


class Processes:
    """Starts processes and stops every one of them when closed."""

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir
        self._running: list[Process] = []
        self._pending: list[subprocess.Popen[str]] = []

    def start(
        self,
        args: list[str],
        env: Mapping[str, str],
        *,
        ready_url: str,
        cwd: Path | None = None,
        name: str | None = None,
        timeout_s: float = READY_TIMEOUT_S,
    ) -> Process:
        """Launch `python -m app.cli ARGS` and wait until `ready_url` answers 200 (or fail with the log tail)."""
        process = self.launch(args, env, ready_url=ready_url, cwd=cwd, name=name)
        _wait_ready(process, ready_url, timeout_s)
        return process

    def launch(
        self,
        args: list[str],
        env: Mapping[str, str],
        *,
        ready_url: str,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> Process:
        """Launch a server like `start`, without waiting for it (see `start_gateways`)."""
        name = name or args[0]
        process = start_process(
            name,
            [*CLI, *args],
            env,
            cwd=cwd or self.logs_dir,
            log_path=self._log_path(name),
            base_url="/".join(ready_url.split("/", 3)[:3]),
        )
        self._running.append(process)
        return process

    def spawn_tenant(self, name: str, env: Mapping[str, str]) -> subprocess.Popen[str]:
        """`tenants create NAME --json`, not waited for: `Gateway.tenant` reads its answer (a tenant can be created
        while the gateway starts)."""
        return self.spawn(["tenants", "create", name, "--json"], env)

    def spawn(self, args: list[str], env: Mapping[str, str], *, cwd: Path | None = None) -> subprocess.Popen[str]:
        """Launch a one-shot command without waiting for it (see `finish`)."""
        popen = subprocess.Popen(
            [*CLI, *args],
            env=dict(env),
            cwd=cwd or self.logs_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._pending.append(popen)
        return popen

    def finish(self, popen: subprocess.Popen[str], timeout_s: float = COMMAND_TIMEOUT_S) -> Result:
        """Wait for a spawned command; a hung one is killed and fails the test."""
        try:
            stdout, stderr = popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(popen)
            stdout, stderr = popen.communicate()
            pytest.fail(f"{popen.args!r} did not finish in {timeout_s} s\nstdout: {stdout}\nstderr: {stderr}")
        return Result(popen.returncode, stdout, stderr)

    def run(
        self,
        args: list[str],
        env: Mapping[str, str],
        *,
        cwd: Path | None = None,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> Result:
        """Run a one-shot command to its end."""
        return self.finish(self.spawn(args, env, cwd=cwd), timeout_s)

    def close(self) -> None:
        for popen in self._pending:
            if popen.poll() is None:
                kill_group(popen)
                popen.wait(STOP_TIMEOUT_S)
        for process in reversed(self._running):
            process.stop()
        self._pending.clear()
        self._running.clear()

    def _log_path(self, name: str) -> Path:
        path = self.logs_dir / f"{name}.log"
        index = 1
        while path.exists():
            index += 1
            path = self.logs_dir / f"{name}-{index}.log"
        return path


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        """The one JSON object the command printed on stdout."""
        for line in self.stdout.splitlines():
            if line.lstrip().startswith("{"):
                value: dict[str, Any] = json.loads(line)
                return value
        raise AssertionError(f"no JSON object on stdout: {self.stdout!r} (stderr: {self.stderr!r})")


def _wait_ready(process: Process, url: str, timeout_s: float) -> None:
    """wait_until_ready, failing the test (with this traceback, not NotReady's) if the server does not come up."""
    try:
        wait_until_ready(process, url, timeout_s)
    except NotReady as e:
        failure = str(e)
    else:
        return
    pytest.fail(failure)


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Processes of one test, all stopped at its end."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Processes shared by the tests of a module, stopped after its last test."""
    procs = Processes(tmp_path_factory.mktemp("e2e-shared"))
    try:
        yield procs
    finally:
        procs.close()


@dataclass
class Sandbox:
    """The sandbox upstream running as its own process (`seedream-gateway sandbox`)."""

    process: Process

    @property
    def url(self) -> str:
        return self.process.base_url

    def stats(self) -> dict[str, Any]:
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            response = client.get(f"{self.url}/_control/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    async def creates_once_settled(self, expected: int, timeout_s: float) -> int:
        """The create calls the sandbox has received, once they reach `expected` (or at the deadline; at once when
        they are past it). A submit answered 200 may reach the upstream a moment later: a task that found no free
        key slot waits and is sent by a reconciler's round, so a count read right after the answers can be short."""
        deadline = time.monotonic() + timeout_s
        while True:
            creates = int(self.stats()["create"])
            if creates >= expected or time.monotonic() >= deadline:
                return creates
            await asyncio.sleep(0.2)

    def config(self) -> dict[str, Any]:
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            response = client.get(f"{self.url}/_control/config")
        response.raise_for_status()
        config: dict[str, Any] = response.json()
        return config

    def configure(self, **changes: Any) -> None:
        """Change the live config (`PATCH /_control/config`); the next test gets the start-up config back."""
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            client.patch(f"{self.url}/_control/config", json=changes).raise_for_status()

    def reset(self) -> None:
        """Forget tasks, uploads and counters (`POST /_control/reset`)."""
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            client.post(f"{self.url}/_control/reset").raise_for_status()


@pytest.fixture(scope="module")
def sandbox_process(module_processes: Processes) -> Process:
    port = free_port()
    return module_processes.start(
        ["sandbox", "--host", HOST, "--port", str(port)],
        base_env(SANDBOX_SLOW_FACTOR="20"),  # a `[fault:slow]` task stays open for 30 s
        ready_url=f"http://{HOST}:{port}/",
    )


@pytest.fixture(scope="module")
def sandbox_start_config(sandbox_process: Process) -> dict[str, Any]:
    return Sandbox(sandbox_process).config()


@pytest.fixture
def sandbox(sandbox_process: Process, sandbox_start_config: dict[str, Any]) -> Sandbox:
    """The module's sandbox upstream with its start-up config back, and its tasks and counters reset."""
    if sandbox_process.popen.poll() is not None:
        pytest.fail(f"the sandbox exited; log tail:\n{sandbox_process.tail()}")
    upstream = Sandbox(sandbox_process)
    upstream.configure(**sandbox_start_config)
    upstream.reset()
    return upstream


@dataclass
class Gateway:
    """A `serve` process against an external upstream, and the environment its CLI commands share."""

    process: Process
    env: dict[str, str]
    processes: Processes

    @property
    def url(self) -> str:
        return self.process.base_url

    @property
    def generations(self) -> str:
        return f"{self.url}/v1/images/generations"

    def spawn_tenant(self, name: str) -> subprocess.Popen[str]:
        return self.processes.spawn_tenant(name, self.env)

    def tenant(self, popen: subprocess.Popen[str]) -> Tenant:
        result = self.processes.finish(popen)
        assert result.returncode == 0, f"tenants create failed: {result.stderr[-TAIL_CHARS:]}"
        data = result.json()
        return Tenant(id=data["tenant_id"], name=data["name"], key=data["key"])


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def gateway_env(database_url: str, upstream_url: str, **overrides: str) -> dict[str, str]:
    """What ops would set for `serve` in front of a real upstream (here: the sandbox process)."""
    settings = {
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_UPSTREAM_BASE_URL": upstream_url,
        "GATEWAY_UPSTREAM_KEYS": UPSTREAM_KEY,
        "GATEWAY_ADMIN_TOKEN": "adm-e2e-" + secrets.token_urlsafe(16),
        "GATEWAY_SECRET_KEY": secrets.token_urlsafe(32),
        "GATEWAY_DB_POOL_SIZE": "10",
        **FAST_REFRESH,
        **overrides,
    }
    return base_env(**settings)


def start_gateway(processes: Processes, env: dict[str, str], name: str = "serve") -> Gateway:
    [gateway] = start_gateways(processes, env, [name])
    return gateway


def start_gateways(processes: Processes, env: dict[str, str], names: list[str]) -> list[Gateway]:
    """`serve` replicas on one environment, all launched before any is waited for (each start is seconds of
    imports, which replicas then spend side by side)."""
    launched = []
    ports: set[int] = set()
    for name in names:
        port = free_port()
        while port in ports:  # none is bound yet: the kernel may hand out one twice
            port = free_port()
        ports.add(port)
        ready_url = f"http://{HOST}:{port}/healthz"
        launched.append(
            (
                processes.launch(["serve", "--host", HOST, "--port", str(port)], env, ready_url=ready_url, name=name),
                ready_url,
            )
        )
    for process, ready_url in launched:
        _wait_ready(process, ready_url, READY_TIMEOUT_S)
    return [Gateway(process, env, processes) for process, _ in launched]


@pytest.fixture
def fresh_database_url(postgres_server: str) -> Iterator[str]:
    """A new, unmigrated, empty database (to exercise `migrate`)."""
    url = create_postgres_database(postgres_server, prefix="gw_e2e")
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture
def clean_postgres(postgres_database: str) -> str:
    """The worker's database, emptied."""
    truncate_all(postgres_database)
    return postgres_database
