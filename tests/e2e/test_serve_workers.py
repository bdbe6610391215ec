"""`serve --workers 2` as ops run it: one real process group.

The parent answers on its port through two worker processes (its children), serves a tenant's submit and status
(the tenant made by the CLI, the task settled through whichever worker the kernel hands each connection), and on
SIGTERM, sent to the parent alone as `docker stop` does through tini, lets a request in flight finish, stops both
workers (their lifespans shut down cleanly) and exits 0, leaving nothing of its process group behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    HOST,
    Gateway,
    Process,
    Processes,
    Sandbox,
    free_port,
    gateway_env,
    http_client,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc"),
]

WORKERS = 2
MODEL = "doubao-seedream-4-0"
# Generous: two workers import and start the app at once, on a machine that may be busy with other tests.
START_TIMEOUT_S = 90.0
TASK_DEADLINE_S = 60.0
STOP_BOUND_S = 60.0  # the grace (30 s) plus the lifespans' shutdown, with room to spare
# How long the sandbox holds the create call of the request in flight at SIGTERM.
SLOW_CREATE_S = 3.0
STARTED = "Application startup complete."
SHUT_DOWN = "Application shutdown complete."


def _children(pid: int) -> dict[int, str]:
    """The live child processes of pid and their command lines (from /proc)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def _workers(pid: int) -> list[int]:
    """uvicorn's workers among pid's children: multiprocessing spawns them (its resource tracker is a child too)."""
    return sorted(child for child, cmdline in _children(pid).items() if "spawn_main" in cmdline)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(what: str, check: Callable[[], bool], process: Process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout_s:g} s; log tail:\n{process.tail()}")
        time.sleep(0.1)


def _start(processes: Processes, env: dict[str, str]) -> Gateway:
    port = free_port()
    process = processes.start(
        ["serve", "--host", HOST, "--port", str(port), "--workers", str(WORKERS)],
        env,
        ready_url=f"http://{HOST}:{port}/healthz",
        name="serve-workers",
        timeout_s=START_TIMEOUT_S,
    )
    # /healthz answers as soon as one worker is up: wait for every one of them.
    _wait_for(f"{WORKERS} workers started", lambda: process.log().count(STARTED) >= WORKERS, process, START_TIMEOUT_S)
    return Gateway(process, env, processes)


async def test_two_workers_serve_and_stop_on_sigterm(
    clean_postgres: str, sandbox: Sandbox, processes: Processes
) -> None:
    env = gateway_env(clean_postgres, sandbox.url, GATEWAY_SHUTDOWN_GRACE_S="30")
    pending = processes.spawn_tenant("acme", env)
    gateway = _start(processes, env)
    parent = gateway.process.popen.pid
    workers = _workers(parent)
    assert len(workers) == WORKERS, f"children of serve: {_children(parent)}"
    assert os.getpgid(parent) == parent and all(os.getpgid(w) == parent for w in workers)

    tenant = gateway.tenant(pending)
    async with http_client() as client:
        submitted = await client.post(
            gateway.generations, json={"model": MODEL, "prompt": "a lighthouse", "n": 1}, headers=tenant.headers
        )
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["id"]
        deadline = time.monotonic() + TASK_DEADLINE_S
        while True:  # a new connection each time: any worker may answer, every one knows the task
            async with http_client() as fresh:
                status = await fresh.get(f"{gateway.generations}/{task_id}", headers=tenant.headers)
            assert status.status_code == 200, status.text
            assert status.json()["id"] == task_id
            if status.json()["status"] == "completed":
                break
            assert status.json()["status"] in ("queued", "in_progress"), status.text
            assert time.monotonic() < deadline, f"task still {status.json()['status']}"
            await asyncio.sleep(0.2)
        usage = await client.get(f"{gateway.url}/v1/usage", headers=tenant.headers)
        assert usage.status_code == 200, usage.text

        # A request in flight when SIGTERM arrives: the sandbox holds its create call for SLOW_CREATE_S.
        sandbox.configure(timeout_seconds=SLOW_CREATE_S)
        in_flight = asyncio.create_task(
            client.post(
                gateway.generations,
                json={"model": MODEL, "prompt": "[fault:timeout] a slow one", "n": 1},
                headers=tenant.headers,
            )
        )
        while sandbox.stats()["faults"].get("timeout", 0) < 1:  # the gateway is waiting for the upstream now
            assert not in_flight.done(), in_flight.result().text
            assert time.monotonic() < deadline, "the slow create never reached the sandbox"
            await asyncio.sleep(0.05)
        os.kill(parent, signal.SIGTERM)
        finished = await in_flight
    assert finished.status_code == 200, finished.text
    assert finished.json()["status"] == "queued"

    try:
        code = gateway.process.popen.wait(STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve did not stop within {STOP_BOUND_S:g} s of SIGTERM; log tail:\n{gateway.process.tail()}")
    log = gateway.process.log()
    assert code == 0, f"serve exited with {code}; log tail:\n{gateway.process.tail()}"
    assert log.count(SHUT_DOWN) == WORKERS, f"not every worker's lifespan shut down; log tail:\n{log[-4000:]}"
    assert "shutdown failed" not in log and "graceful shutdown exceeded" not in log, log[-4000:]
    # The workers and the resource tracker go with the parent (the tracker on its own, shortly after).
    _wait_for("the process group gone", lambda: not _group_alive(parent), gateway.process, STOP_BOUND_S)
