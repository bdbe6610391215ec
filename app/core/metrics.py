"""The gateway's Prometheus metrics, defined once per process (names and labels as deploy/grafana and
deploy/prometheus use them; tests/test_deploy_files.py lists them).

Single process: the metrics live in `REGISTRY`. `serve --workers N` (N > 1): the parent points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before spawning the workers, each worker writes its values there
(prometheus-client's multiprocess mode, chosen when the library is imported) and whichever worker answers a scrape
sums them (`render`). Gauges are per live process ("livemax"/"livesum"): a dead worker's gauges are dropped at the
next scrape, its counters kept.

Labels are bounded: routes are templates, never raw paths; tenants beyond the first `max_tenants` seen by a process
share the label "other"; no task id is ever a label. The hot path (one HTTP answer) is counted in plain Python and
folded into the metrics later (`observe_http`).
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER_TENANT = "other"
UNMATCHED_ROUTE = "unmatched"
# The status of a request whose client went away before any answer (nginx's): not a 5xx, nobody was answered.
CLIENT_CLOSED_REQUEST = 499

# No `_created` series: twice the series for nothing the dashboard reads.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)

FOLD_S = 1.0  # the longest an answer counted by observe_http waits before a scrape by another worker sees it
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUESTS = Counter(
    "gateway_http_requests",
    "HTTP answers by route template, method and status.",
    ("route", "method", "status"),
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "gateway_http_request_duration_seconds",
    "Time from a request's arrival to its answer's last byte, by route template and method.",
    ("route", "method"),
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_CALLS = Counter(
    "gateway_upstream_calls",
    "Calls to the upstream by key, operation (create, get, upload) and outcome (ok or the error kind).",
    ("key_id", "operation", "outcome"),
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_call_duration_seconds",
    "Duration of upstream calls by operation.",
    ("operation",),
    buckets=_UPSTREAM_BUCKETS,
    registry=REGISTRY,
)
TASKS_ENDED = Counter(
    "gateway_tasks_ended",
    "Tasks that ended (completed or failed), by tenant.",
    ("tenant", "status"),
    registry=REGISTRY,
)
TASKS_WAITING = Gauge(
    "gateway_tasks_waiting",
    "Tasks waiting to be sent upstream (the whole ledger).",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
REFUSALS = Counter(
    "gateway_refusals",
    "Requests refused for a tenant's limits: quota (402, in-flight 429) or rate (per-minute 429).",
    ("tenant", "kind"),
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "gateway_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, retry, dead).",
    ("outcome",),
    registry=REGISTRY,
)
RESULT_COPIES = Counter(
    "gateway_result_copies",
    "Copies of result images into the gateway's store by outcome (kept, retry, lost).",
    ("outcome",),
    registry=REGISTRY,
)
RESULT_COPIED_BYTES = Counter(
    "gateway_result_copied_bytes",
    "Bytes of result images copied into the gateway's store.",
    registry=REGISTRY,
)
RESULT_DELETIONS = Counter(
    "gateway_result_deletions",
    "Kept result images deleted from the store (their retention ended, or ops deleted them).",
    registry=REGISTRY,
)
RESULT_STORE_BYTES = Gauge(
    "gateway_result_store_bytes",
    "Bytes of result images kept in the gateway's store, by tenant (the whole ledger).",
    ("tenant",),
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
UPSTREAM_KEYS = Gauge(
    "gateway_upstream_keys",
    "Upstream keys of the pool by state, as this process holds them.",
    ("state",),
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
DB_POOL_IN_USE = Gauge(
    "gateway_db_pool_in_use",
    "Database connections checked out of the pool.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)


class _Labels:
    """Per-process label bookkeeping: the tenant cap and the children already asked for."""

    def __init__(self) -> None:
        self.max_tenants = 100
        self.enabled = True
        self.tenants: dict[str, str] = {}


_labels = _Labels()


def configure(*, max_tenants: int, enabled: bool = True) -> None:
    _labels.max_tenants = max_tenants
    _labels.enabled = enabled


def enabled() -> bool:
    return _labels.enabled


def reset_tenant_labels() -> None:
    """Forget the tenants seen (tests)."""
    _labels.tenants.clear()


def tenant_label(tenant_id: str) -> str:
    """The tenant's own id for the first `max_tenants` tenants this process labels, "other" for the rest."""
    known = _labels.tenants.get(tenant_id)
    if known is not None:
        return known
    label = tenant_id if len(_labels.tenants) < _labels.max_tenants else OTHER_TENANT
    if label != OTHER_TENANT:
        _labels.tenants[tenant_id] = label
    return label


def observe_http(route: str, method: str, status: int, seconds: float) -> None:
    """Count one answer. Counted in plain Python first (a Counter.inc and a Histogram.observe take a lock each, and
    in multiprocess mode write a memory-mapped file each: several times the cost, once per request), then folded
    into the metrics by `fold_http`: before this process renders a scrape, and with `serve --workers N` every FOLD_S
    by each worker's `fold_every` task (so a scrape answered by another worker lags by about that)."""
    if not _labels.enabled:
        return
    key = (route, method, status)
    tally = _http_tally.get(key)
    if tally is None:
        if len(_http_tally) >= 10_000:  # routes x methods x statuses is small; a bound all the same
            fold_http()
        tally = _http_tally[key] = [0, 0.0, [0] * (len(_LATENCY_BUCKETS) + 1)]
    tally[0] += 1
    tally[1] += seconds
    tally[2][bisect_left(_LATENCY_BUCKETS, seconds)] += 1  # the first bucket whose bound is >= seconds (or +Inf)


async def fold_every(seconds: float = FOLD_S) -> None:
    """Fold what this process counted every `seconds`, until cancelled (a background task of each worker)."""
    while True:
        await asyncio.sleep(seconds)
        fold_http()


def fold_http() -> None:
    """Add the answers counted since the last fold to the HTTP metrics."""
    pending = list(_http_tally.items())
    _http_tally.clear()
    for (route, method, status), (count, total, buckets) in pending:
        HTTP_REQUESTS.labels(route, method, str(status)).inc(count)
        histogram = HTTP_DURATION.labels(route, method)
        # What Histogram.observe does per observation, once per fold: its sum and the one bucket each falls in
        # (prometheus-client's cumulative `le` counts are computed when exposed).
        histogram._sum.inc(total)
        for index, n in enumerate(buckets):
            if n:
                histogram._buckets[index].inc(n)


# (route, method, status) -> [answers, seconds in all, answers per latency bucket (+Inf last)]
_http_tally: dict[tuple[str, str, int], list[Any]] = {}


def observe_upstream(key_id: str, operation: str, outcome: str, seconds: float) -> None:
    if not _labels.enabled:
        return
    UPSTREAM_CALLS.labels(key_id, operation, outcome).inc()
    UPSTREAM_DURATION.labels(operation).observe(seconds)


def task_ended(tenant_id: str, status: str) -> None:
    if not _labels.enabled:
        return
    TASKS_ENDED.labels(tenant_label(tenant_id), status).inc()


def refused(tenant_id: str, kind: str) -> None:
    if not _labels.enabled:
        return
    REFUSALS.labels(tenant_label(tenant_id), kind).inc()


def webhook_delivery(outcome: str) -> None:
    if not _labels.enabled:
        return
    WEBHOOK_DELIVERIES.labels(outcome).inc()


def result_copy(outcome: str, size: int = 0) -> None:
    if not _labels.enabled:
        return
    RESULT_COPIES.labels(outcome).inc()
    if size:
        RESULT_COPIED_BYTES.inc(size)


def result_deleted(count: int = 1) -> None:
    if _labels.enabled and count:
        RESULT_DELETIONS.inc(count)


def result_store_bytes(by_tenant: dict[str, int]) -> None:
    """Set the per-tenant gauge (tenants past the label cap summed under "other")."""
    if not _labels.enabled:
        return
    totals: dict[str, int] = {}
    for tenant_id, size in by_tenant.items():
        label = tenant_label(tenant_id)
        totals[label] = totals.get(label, 0) + size
    RESULT_STORE_BYTES.clear()
    for label, size in totals.items():
        RESULT_STORE_BYTES.labels(label).set(size)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def render() -> bytes:
    """The exposition text: this process's registry, or every worker's values in multiprocess mode."""
    fold_http()
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY)
    _drop_dead_workers(Path(directory))
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def _drop_dead_workers(directory: Path) -> None:
    """Drop the live-gauge files of workers that are gone (a worker replaced after a crash never said so)."""
    pids: set[int] = set()
    for path in directory.glob("gauge_live*_*.db"):
        tail = path.stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            pids.add(int(tail))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
        except PermissionError:
            pass


def process_exiting() -> None:
    """A worker's shutdown: its gauges stop counting (its counters stay in the sums)."""
    fold_http()  # what this worker counted is kept in the sums
    directory = multiprocess_dir()
    if directory is not None:
        mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]
