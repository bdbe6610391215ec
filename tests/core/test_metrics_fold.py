"""HTTP answers are counted in plain Python and folded into the Prometheus metrics later (app/core/metrics.py): the
folded metrics must equal what Counter.inc and Histogram.observe per answer would have made, bucket edges included,
and nothing may be counted twice or lost."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram

from app.core import metrics

ROUTE = "/test/fold/{id}"
EDGES = [0.0, 0.0005, 0.001, 0.0010001, 0.0025, 0.004, 0.05, 1.0, 29.9, 30.0, 30.5, 1000.0]


def samples(name: str, route: str) -> dict[tuple[str, str], float]:
    """(sample name, le) -> value for one route of a metric of the gateway's registry."""
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in metrics.REGISTRY.collect()
        if family.name == name
        for sample in family.samples
        if sample.labels.get("route") == route
    }


def test_a_fold_equals_one_observe_per_answer() -> None:
    reference = Histogram("reference", "", buckets=metrics._LATENCY_BUCKETS, registry=CollectorRegistry())
    before = samples("gateway_http_request_duration_seconds", ROUTE)
    for seconds in EDGES:
        reference.observe(seconds)
    for seconds in EDGES:
        metrics.observe_http(ROUTE, "GET", 200, seconds)
    metrics.fold_http()
    after = samples("gateway_http_request_duration_seconds", ROUTE)
    expected = {
        (sample.name.replace("reference", "gateway_http_request_duration_seconds"), sample.labels.get("le", "")): (
            sample.value
        )
        for family in reference.collect()
        for sample in family.samples
    }
    grown = {key: value - before.get(key, 0.0) for key, value in after.items()}
    assert grown.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(grown[key] - value) < 1e-9, key


def test_answers_are_folded_once_by_a_scrape_or_the_background_fold() -> None:
    route = "/test/fold-loop"

    def count() -> float:
        return samples("gateway_http_requests", route).get(("gateway_http_requests_total", ""), 0.0)

    async def scenario() -> None:
        start = count()
        for _ in range(5):
            metrics.observe_http(route, "POST", 201, 0.002)
        assert count() == start  # not yet folded
        metrics.render()  # a scrape folds first
        assert count() == start + 5
        metrics.render()
        assert count() == start + 5  # and never twice
        metrics.observe_http(route, "POST", 201, 0.002)
        folding = asyncio.create_task(metrics.fold_every(0.01))  # each worker's background fold
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while count() != start + 6:
                assert asyncio.get_running_loop().time() < deadline, "the background fold never ran"
                await asyncio.sleep(0.01)
        finally:
            folding.cancel()

    asyncio.run(scenario())
