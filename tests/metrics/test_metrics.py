"""/metrics: every counter moves by exactly what a scenario did, access is loopback or the metrics token, and the
labels stay bounded (route templates, capped tenants)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.core import metrics
from app.models import UpstreamKeyStatus
from tests.fixtures.gateway import Harness, running_gateway

URL = "/v1/images/generations"
STATUS_ROUTE = "/v1/images/generations/{task_id}"
METRICS_TOKEN = "metrics-token-for-tests-0123456789"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    r = await client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much the series matching `labels` (a subset of its labels) moved, summed."""
    wanted = set(labels.items())

    def total(samples: Samples) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)

    return total(after) - total(before)


def values(samples: Samples, name: str, label: str) -> Iterator[str]:
    for (n, ls), _ in samples.items():
        if n == name:
            yield dict(ls)[label]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(autouse=True)
def _fresh_tenant_labels() -> Iterator[None]:
    metrics.reset_tenant_labels()  # the cap counts tenants per process; earlier tests of this worker saw others
    yield
    metrics.reset_tenant_labels()


async def test_a_scenario_moves_each_counter_by_what_happened(gw: Harness) -> None:
    before = await scrape(gw.client)
    acme = await gw.new_tenant("acme", daily_images=3)
    acme_id = await gw.tenant_id(acme)
    slow = await gw.new_tenant("slow", submit_rpm=1)
    slow_id = await gw.tenant_id(slow)

    ok = await gw.client.post(URL, headers=bearer(acme), json={"prompt": "a fox", "n": 1})
    assert ok.status_code == 200, ok.text
    failing = await gw.client.post(URL, headers=bearer(acme), json={"prompt": "a fox [fault:fail]", "n": 1})
    assert failing.status_code == 200, failing.text
    refused = await gw.client.post(URL, headers=bearer(acme), json={"prompt": "many foxes", "n": 2})
    assert refused.status_code == 402, refused.text
    assert (await gw.client.post(URL, headers=bearer(slow), json={"prompt": "a cat", "n": 1})).status_code == 200
    rated = await gw.client.post(URL, headers=bearer(slow), json={"prompt": "a cat", "n": 1})
    assert rated.status_code == 429, rated.text
    gw.clock.advance(3600)
    for task in (ok, failing):
        r = await gw.client.get(f"{URL}/{task.json()['id']}", headers=bearer(acme))
        assert r.status_code == 200, r.text
    limited = await gw.client.post(URL, headers=bearer(acme), json={"prompt": "a fox [fault:429]", "n": 1})
    missing = await gw.client.get("/no/such/path")
    assert missing.status_code == 404

    after = await scrape(gw.client)
    assert limited.status_code == 200 and limited.json()["status"] == "queued"  # it waits for the key to cool

    def moved(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    requests = "gateway_http_requests_total"
    assert moved(requests, route=URL, method="POST", status="200") == 4
    assert moved(requests, route=URL, method="POST", status="402") == 1
    assert moved(requests, route=URL, method="POST", status="429") == 1
    assert moved(requests, route=STATUS_ROUTE, method="GET", status="200") == 2
    assert moved(requests, route="unmatched", method="GET", status="404") == 1
    assert moved(requests, route="/metrics", method="GET", status="200") == 1  # the first scrape (and not this one)
    assert moved(requests) == 10
    assert moved("gateway_http_request_duration_seconds_count", route=URL, method="POST") == 6
    assert moved("gateway_http_request_duration_seconds_count", route=STATUS_ROUTE, method="GET") == 2
    assert not any("task_img" in route for route in values(after, requests, "route")), "a raw path became a label"

    calls = "gateway_upstream_calls_total"
    (key,) = gw.app.state.upstream.pool.snapshot()
    key_id = key.id
    assert moved(calls, key_id=key_id, operation="create", outcome="ok") == 3
    assert moved(calls, key_id=key_id, operation="create", outcome="429") == 1
    assert moved(calls, key_id=key_id, operation="get", outcome="ok") == 2
    assert moved(calls) == 6
    assert moved("gateway_upstream_call_duration_seconds_count", operation="create") == 4
    assert moved("gateway_upstream_call_duration_seconds_count", operation="get") == 2

    assert moved("gateway_tasks_ended_total", tenant=acme_id, status="completed") == 1
    assert moved("gateway_tasks_ended_total", tenant=acme_id, status="failed") == 1
    assert moved("gateway_tasks_ended_total") == 2
    assert moved("gateway_refusals_total", tenant=acme_id, kind="quota") == 1
    assert moved("gateway_refusals_total", tenant=slow_id, kind="rate") == 1
    assert moved("gateway_refusals_total") == 2
    assert moved("gateway_webhook_deliveries_total") == 0

    assert after[("gateway_tasks_waiting", frozenset())] == 1
    keys = {state: after[("gateway_upstream_keys", frozenset({("state", state)}))] for state in UpstreamKeyStatus}
    assert keys == {"active": 0, "cooling": 1, "disabled": 0, "draining": 0, "retired": 0}
    # Nothing of the scenario holds a connection any more; a background loop (the invalidator reads 4 times a
    # second, the reconciler sweeps) may hold one at the scrape's moment on a busy machine (seen in ci-loaded).
    assert after[("gateway_db_pool_in_use", frozenset())] in (0, 1, 2)


async def test_metrics_are_open_to_loopback_only_without_a_token(gw: Harness) -> None:
    assert (await gw.client.get("/metrics")).status_code == 200  # the in-process client is 127.0.0.1
    remote = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gw.app, client=("10.1.2.3", 4567)), base_url="http://gateway.test"
    )
    async with remote:
        r = await remote.get("/metrics", headers=bearer("anything-at-all-0123456789"))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    assert r.headers["x-request-id"]


async def test_metrics_token_is_required_from_elsewhere(database_url: str) -> None:
    async with running_gateway(database_url, metrics_token=METRICS_TOKEN) as gw:
        remote = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gw.app, client=("10.1.2.3", 4567)), base_url="http://gateway.test"
        )
        async with remote:
            missing = await remote.get("/metrics")
            wrong = await remote.get("/metrics", headers=bearer("wrong-token-0123456789"))
            right = await remote.get("/metrics", headers=bearer(METRICS_TOKEN))
        assert missing.status_code == wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "authentication_error"
        assert METRICS_TOKEN not in wrong.text
        assert right.status_code == 200 and "gateway_http_requests_total" in right.text
        assert (await gw.client.get("/metrics")).status_code == 200  # loopback needs no token


async def test_metrics_is_not_in_the_openapi_document(gw: Harness) -> None:
    assert "/metrics" not in (await gw.client.get("/openapi.json")).json()["paths"]


async def test_tenant_labels_are_capped(database_url: str) -> None:
    async with running_gateway(database_url, metrics_max_tenants=2) as gw:
        ids = []
        for name in ("one", "two", "three", "four"):
            key = await gw.new_tenant(name, submit_rpm=0)  # every submit refused by the rate
            ids.append(await gw.tenant_id(key))
            r = await gw.client.post(URL, headers=bearer(key), json={"prompt": "a fox", "n": 1})
            assert r.status_code == 429, r.text
        samples = await scrape(gw.client)
    refusals = {
        dict(labels)["tenant"]: value
        for (name, labels), value in samples.items()
        if name == "gateway_refusals_total" and dict(labels)["kind"] == "rate"
    }
    assert refusals.get(ids[0]) == refusals.get(ids[1]) == 1
    assert ids[2] not in refusals and ids[3] not in refusals
    assert refusals.get(metrics.OTHER_TENANT, 0) >= 2


async def test_webhook_delivery_outcomes(database_url: str) -> None:
    from tests.fixtures.webhook_receiver import receiving
    from tests.webhooks.test_webhooks import ADMIN, configure, tenant, until

    settings = {"webhook_allow_private": True, "webhook_retry_schedule_s": "1,2"}
    async with running_gateway(database_url, **settings) as gw, receiving(fail_first=3) as receiver:
        before = await scrape(gw.client)
        _, tenant_id = await tenant(gw, "acme")
        await configure(gw, tenant_id, url=receiver.url)
        test = await gw.client.post(f"/admin/v1/tenants/{tenant_id}/webhook/test", headers=ADMIN)
        delivery_id = test.json()["id"]
        await until(gw, delivery_id, lambda d: d["attempts"] == 1)
        gw.clock.advance(1)
        await until(gw, delivery_id, lambda d: d["attempts"] == 2)
        gw.clock.advance(2)
        await until(gw, delivery_id, lambda d: d["status"] == "dead")
        replayed = await gw.client.post(f"/admin/v1/webhook-deliveries/{delivery_id}/replay", headers=ADMIN)
        assert replayed.status_code == 200, replayed.text
        await until(gw, delivery_id, lambda d: d["status"] == "delivered")
        after = await scrape(gw.client)
    kinds = ("retry", "dead", "delivered")
    outcomes = {kind: delta(before, after, "gateway_webhook_deliveries_total", outcome=kind) for kind in kinds}
    assert outcomes == {"retry": 2, "dead": 1, "delivered": 1}


async def test_metrics_switched_off_count_nothing_and_are_not_served(database_url: str) -> None:
    def http_requests() -> float:
        metrics.fold_http()  # what observe_http counted since the last fold (render() does the same)
        return sum(
            sample.value
            for family in metrics.REGISTRY.collect()
            if family.name == "gateway_http_requests"
            for sample in family.samples
            if sample.name.endswith("_total")
        )

    try:
        async with running_gateway(database_url, metrics_enabled=False) as gw:
            before = http_requests()
            assert (await gw.client.get("/healthz")).status_code == 200
            r = await gw.client.get("/metrics")
            assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error", r.text
            assert http_requests() == before
    finally:
        metrics.configure(max_tenants=100, enabled=True)
    async with running_gateway(database_url) as gw:  # and on again by default: the same call counts
        before = http_requests()
        assert (await gw.client.get("/healthz")).status_code == 200
        assert http_requests() == before + 1
