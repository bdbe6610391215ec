"""The gateway's Prometheus metrics, defined once per process (names and labels as deploy/grafana and
deploy/prometheus use them; tests/test_deploy_files.py lists them).

Single process: the metrics live in `REGISTRY`. `serve --workers N` (N > 1): the parent points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before spawning the workers, each worker writes its values there
(prometheus-client's multiprocess mode, chosen when the library is imported) and whichever worker answers a scrape
sums them (`render`). Gauges are per live process ("livemax"/"livesum"): a dead worker's gauges are dropped at the
next scrape, its counters kept.

Labels are bounded: routes are templates, never raw paths; tenants beyond the first `max_tenants` seen by a process
share the label "other"; no task id is ever a label. The hot path asks for a labelled child once per label tuple
and keeps it (`labels()` takes a lock and builds a tuple on every call).
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER_TENANT = "other"
UNMATCHED_ROUTE = "unmatched"
KEY_STATES = ("active", "cooling", "disabled", "draining", "retired")

# No `_created` series: twice the series for nothing the dashboard reads.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)

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
        self.http: dict[tuple[str, str, int], tuple[object, object]] = {}


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
    if not _labels.enabled:
        return
    key = (route, method, status)
    children = _labels.http.get(key)
    if children is None:
        children = (HTTP_REQUESTS.labels(route, method, str(status)), HTTP_DURATION.labels(route, method))
        if len(_labels.http) < 10_000:  # routes x methods x statuses is small; a bound all the same
            _labels.http[key] = children
    counter, histogram = children
    counter.inc()  # type: ignore[attr-defined]
    histogram.observe(seconds)  # type: ignore[attr-defined]


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


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def render() -> bytes:
    """The exposition text: this process's registry, or every worker's values in multiprocess mode."""
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
    directory = multiprocess_dir()
    if directory is not None:
        mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]
