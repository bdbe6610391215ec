"""`serve --workers 2` on PostgreSQL: /metrics, answered by whichever worker takes the connection, reports the counters
of both workers summed (prometheus-client's multiprocess mode under a directory the parent made), and the parent
removes that directory when it exits."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Processes, Sandbox, gateway_env, http_client
from tests.e2e.test_serve_workers import WORKERS, _start, _workers

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc"),
]

REQUESTS = 40
FOLD_DEADLINE_S = 30.0


# Counted: /readyz, which nothing else calls (the start-up probe calls /healthz, which a worker may not have folded
# into the shared files yet when the test reads its `before`).
COUNTED = "/readyz"


def _counted(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "gateway_http_requests_total" and sample.labels.get("route") == COUNTED
    )


def _metrics_dir(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (value,) = [v.split(b"=", 1)[1] for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(value.decode())


async def test_counters_sum_across_workers(clean_postgres: str, sandbox: Sandbox, processes: Processes) -> None:
    gateway = _start(processes, gateway_env(clean_postgres, sandbox.url))
    parent = gateway.process.popen.pid
    workers = _workers(parent)
    assert len(workers) == WORKERS
    directory = _metrics_dir(workers[0])
    assert directory.is_dir() and all(_metrics_dir(w) == directory for w in workers)

    async with http_client() as scraper:
        before = _counted((await scraper.get(f"{gateway.url}/metrics")).text)
    for _ in range(REQUESTS):  # a new connection each time: the kernel hands each to either worker
        async with http_client() as client:
            assert (await client.get(f"{gateway.url}{COUNTED}")).status_code == 200
    # Each worker adds what it counted to the shared files within FOLD_S (app/core/metrics.observe_http): wait for
    # the sum (against a deadline far above FOLD_S, for a busy machine), then every scrape must agree.
    deadline = time.monotonic() + FOLD_DEADLINE_S
    while True:
        async with http_client() as scraper:
            counted = _counted((await scraper.get(f"{gateway.url}/metrics")).text) - before
        if counted == REQUESTS or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    served_by = {p for p in workers if (directory / f"counter_{p}.db").exists()}
    assert served_by == set(workers), f"only {served_by} of {workers} counted anything: no sum to check"
    for _ in range(6):  # every scrape, whichever worker answers it, sees every worker's requests
        async with http_client() as scraper:
            r = await scraper.get(f"{gateway.url}/metrics")
        assert r.status_code == 200, r.text
        assert _counted(r.text) - before == REQUESTS
        assert "gateway_tasks_waiting" in r.text and 'gateway_upstream_keys{state="active"}' in r.text

    os.kill(parent, signal.SIGTERM)
    assert await asyncio.to_thread(gateway.process.popen.wait, 60) == 0
    assert not directory.exists(), "the parent left its metrics directory behind"
