"""Optional OpenTelemetry tracing (app/core/tracing.py): one trace per request with its statements and upstream calls,
nothing secret in any span, and nothing at all without the OTEL_* variables.

The spans go to an in-memory exporter through a span processor handed to `create_app` (which turns tracing on
without any variable); each app has its own TracerProvider, so the global one is never set.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.core import tracing
from app.main import create_app
from app.sandbox.app import create_sandbox_app
from app.sandbox.config import SandboxConfig
from tests.fixtures.clock import FakeClock
from tests.fixtures.gateway import ADMIN_TOKEN, SECRET_KEY, UPSTREAM_KEY, Harness, completed_task, key_known
from tests.fixtures.gateway import test_settings as gateway_settings
from tests.support.served import served

ROOT = Path(__file__).resolve().parents[2]
URL = "/v1/images/generations"
PROMPT = "a lighthouse painted in the style of a tracing test"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(key: str, request_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return headers


@pytest.fixture
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    yield monkeypatch


@asynccontextmanager
async def traced_gateway(database_url: str) -> AsyncIterator[tuple[Harness, InMemorySpanExporter]]:
    """tests/fixtures/gateway.py's `running_gateway`, with a span processor."""
    exporter = InMemorySpanExporter()
    clock = FakeClock()
    sandbox = create_sandbox_app(SandboxConfig(task_seconds=10, queue_seconds=1, seed=7), clock=clock.time)
    async with served(sandbox) as sandbox_url:
        app = create_app(
            gateway_settings(database_url, upstream_base_url=sandbox_url),
            clock=clock.now,
            span_processor=SimpleSpanProcessor(exporter),
        )
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://gw.test")
        async with app.router.lifespan_context(app), client:
            yield Harness(client=client, app=app, sandbox=sandbox, clock=clock), exporter


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def server_spans(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.kind == SpanKind.SERVER and s.name == name]


def trace_of(spans: tuple[ReadableSpan, ...], root: ReadableSpan) -> list[ReadableSpan]:
    assert root.context is not None
    return [s for s in spans if s.context is not None and s.context.trace_id == root.context.trace_id]


def is_db(span: ReadableSpan) -> bool:
    return "db.system" in attributes(span) or "db.system.name" in attributes(span)


def is_http_client(span: ReadableSpan) -> bool:
    found = attributes(span)
    return span.kind == SpanKind.CLIENT and ("http.method" in found or "http.request.method" in found)


def sql(span: ReadableSpan) -> str:
    found = attributes(span)
    return str(found.get("db.statement", found.get("db.query.text", "")))


def status_code(span: ReadableSpan) -> Any:
    found = attributes(span)
    return found.get("http.status_code", found.get("http.response.status_code"))


async def test_a_request_its_statements_and_its_upstream_call_make_one_trace(database_url: str) -> None:
    async with traced_gateway(database_url) as (gw, exporter):
        key = await gw.new_tenant("acme")
        r = await gw.client.post(URL, headers=bearer(key, "trace-submit"), json={"prompt": PROMPT, "n": 2})
        assert r.status_code == 200, r.text
        task_id = r.json()["id"]
        gw.clock.advance(5)
        r = await gw.client.get(f"{URL}/{task_id}", headers=bearer(key, "trace-status"))
        assert r.status_code == 200, r.text
        spans = exporter.get_finished_spans()

    [submit] = server_spans(spans, "POST /v1/images/generations")
    assert attributes(submit)["gateway.request_id"] == "trace-submit"
    assert attributes(submit)["http.route"] == "/v1/images/generations"
    assert status_code(submit) == 200
    in_trace = trace_of(spans, submit)
    statements = [s for s in in_trace if is_db(s)]
    assert statements, [s.name for s in in_trace]
    assert all(s.kind == SpanKind.CLIENT and s.parent is not None for s in statements)
    assert any("INSERT INTO tasks" in sql(s) for s in statements), [sql(s) for s in statements]
    [create] = [s for s in in_trace if is_http_client(s)]
    assert create.parent is not None
    assert str(attributes(create).get("http.url", attributes(create).get("url.full"))).startswith(
        str(gw.app.state.kernel.settings.upstream_base_url) + "/v1/images/generations"
    )
    assert status_code(create) == 200

    [status] = server_spans(spans, "GET /v1/images/generations/{task_id}")
    assert attributes(status)["gateway.request_id"] == "trace-status"
    # An open task past its refresh interval: the status call reads the ledger and asks the upstream, in its trace.
    assert any(is_db(s) for s in trace_of(spans, status))
    assert any(is_http_client(s) for s in trace_of(spans, status))

    # Statements outside any request (creating the tenant, the invalidator's polls) make no trace of their own.
    assert all(s.parent is not None for s in spans if is_db(s))


async def test_no_span_holds_a_key_a_token_or_a_prompt(database_url: str) -> None:
    async with traced_gateway(database_url) as (gw, exporter):
        key = await gw.new_tenant("acme")
        await completed_task(gw, key, PROMPT)
        r = await gw.client.post(URL, headers=bearer("sk-wrong-key-for-tracing-0123456789"), json={"prompt": PROMPT})
        assert r.status_code == 401
        r = await gw.client.get("/admin/v1/tenants", headers=ADMIN)
        assert r.status_code == 200, r.text
        spans = exporter.get_finished_spans()

    assert {s.kind for s in spans} >= {SpanKind.SERVER, SpanKind.CLIENT}
    everything = "\n".join(s.to_json() for s in spans)
    for secret in (key, UPSTREAM_KEY, ADMIN_TOKEN, SECRET_KEY, "sk-wrong-key-for-tracing", PROMPT, "Bearer"):
        assert secret not in everything, secret


async def test_captured_headers_keep_the_keys_redacted(
    database_url: str, no_otel_environment: pytest.MonkeyPatch
) -> None:
    """An operator asking for every header (the instrumentations' own variables) still gets no key."""
    for kind in ("SERVER_REQUEST", "CLIENT_REQUEST"):
        no_otel_environment.setenv(f"OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_{kind}", ".*")
    no_otel_environment.delenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", raising=False)
    async with traced_gateway(database_url) as (gw, exporter):
        key = await gw.new_tenant("acme")
        r = await gw.client.post(URL, headers=bearer(key, "trace-headers"), json={"prompt": PROMPT})
        assert r.status_code == 200, r.text
        spans = exporter.get_finished_spans()

    [submit] = server_spans(spans, "POST /v1/images/generations")
    [create] = [s for s in trace_of(spans, submit) if is_http_client(s)]
    for span in (submit, create):
        captured = {k: v for k, v in attributes(span).items() if ".header." in k}
        assert any("x_request_id" in k or "x-request-id" in k for k in captured), captured  # capture is on
        assert [v for k, v in captured.items() if "authorization" in k] == [("[REDACTED]",)], captured
    everything = "\n".join(s.to_json() for s in spans)
    for secret in (key, UPSTREAM_KEY, "Bearer"):
        assert secret not in everything, secret


async def test_query_strings_probes_and_the_scrape_are_not_traced(database_url: str) -> None:
    async with traced_gateway(database_url) as (gw, exporter):
        r = await gw.client.get("/admin/v1/tenants?limit=7", headers=ADMIN)
        assert r.status_code == 200, r.text
        for path in ("/healthz", "/readyz", "/metrics"):
            await gw.client.get(path)
        spans = exporter.get_finished_spans()

    [listing] = server_spans(spans, "GET /admin/v1/tenants")
    assert not any("limit=7" in str(value) for value in attributes(listing).values()), attributes(listing)
    assert [s.name for s in spans if s.kind == SpanKind.SERVER] == ["GET /admin/v1/tenants"]


async def test_a_status_call_answered_before_routing_gets_its_server_span(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with traced_gateway(database_url) as (gw, exporter):
        key = await gw.new_tenant("acme")
        task_id = await completed_task(gw, key, PROMPT)
        await gw.app.state.invalidator.poll_once()  # before a first read, the caches are not trusted
        assert (await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))).status_code == 200  # fills the cache

        async def not_routed(*_: Any) -> bytes:
            raise AssertionError("a warm status call reached the route")

        monkeypatch.setattr(gw.tasks, "status_answer", not_routed)
        await key_known(gw, key)  # caches are trusted only while the invalidator's last read is recent
        r = await gw.client.get(f"{URL}/{task_id}", headers=bearer(key, "trace-fast-path"))
        assert r.status_code == 200
        spans = exporter.get_finished_spans()

    [fast] = [s for s in spans if attributes(s).get("gateway.request_id") == "trace-fast-path"]
    assert fast.kind == SpanKind.SERVER and fast.name == "GET /v1/images/generations/{task_id}"
    assert status_code(fast) == 200
    assert trace_of(spans, fast) == [fast]  # answered from memory: no statement, no upstream call


async def test_the_provider_is_flushed_and_the_instrumentation_removed_at_shutdown(database_url: str) -> None:
    async with traced_gateway(database_url) as (gw, exporter):
        engine = gw.kernel.engine.sync_engine
        await gw.client.get("/admin/v1/tenants", headers=ADMIN)
    assert server_spans(exporter.get_finished_spans(), "GET /admin/v1/tenants")
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    assert not [entry for entry in EngineTracer._remove_event_listener_params if entry[0]() is engine]
    assert trace.get_tracer_provider().__class__.__name__ == "ProxyTracerProvider"  # the global one never set


@pytest.mark.parametrize(
    ("environ", "requested"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "gw"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "false"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_asked_for_by_the_standard_variables(environ: dict[str, str], requested: bool) -> None:
    assert tracing.tracing_requested(environ) is requested


def test_without_the_variables_nothing_is_configured(no_otel_environment: pytest.MonkeyPatch) -> None:
    app = FastAPI()
    assert tracing.configure_tracing(app) is None
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    assert app.user_middleware == []


def test_without_the_variables_the_gateway_imports_nothing_of_opentelemetry(
    no_otel_environment: pytest.MonkeyPatch,
) -> None:
    """In a fresh interpreter, since this one has the SDK loaded by now."""
    code = """
import sys
from app.core.tracing import RequestIdOnSpan
from app.main import create_app
from tests.fixtures.gateway import test_settings

app = create_app(test_settings("postgresql+asyncpg://never-connected@127.0.0.1:9/none"))
assert app.state.tracing is None
assert RequestIdOnSpan not in [m.cls for m in app.user_middleware]
stack, layers = app.build_middleware_stack(), []
while stack is not None:
    layers.append(type(stack).__module__)
    stack = getattr(stack, "app", None)
assert not [m for m in layers if m.startswith("opentelemetry")], layers
# Not the SDK as a whole: redis-py loads its metrics part when it is installed (redis/observability).
prefixes = ("opentelemetry.sdk.trace", "opentelemetry.instrumentation", "opentelemetry.exporter")
loaded = [m for m in sys.modules if m.startswith(prefixes)]
assert not loaded, loaded
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GATEWAY_"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


async def test_the_variables_turn_on_an_otlp_exporter_named_after_the_service(
    no_otel_environment: pytest.MonkeyPatch,
) -> None:
    no_otel_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    app = FastAPI(version="1.2.3")
    configured = tracing.configure_tracing(app)
    assert configured is not None
    try:
        assert getattr(app, "_is_instrumented_by_opentelemetry", False)
        resource = configured.provider.resource.attributes
        assert resource["service.name"] == "seedream-gateway" and resource["service.version"] == "1.2.3"
    finally:
        await configured.aclose()  # nothing was traced: nothing is sent

    no_otel_environment.setenv("OTEL_SERVICE_NAME", "gateway-eu-1")
    named = tracing.configure_tracing(FastAPI())
    assert named is not None
    try:
        assert named.provider.resource.attributes["service.name"] == "gateway-eu-1"
    finally:
        await named.aclose()


def test_asked_for_without_the_packages_warns_once_and_goes_on(
    no_otel_environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    no_otel_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    no_otel_environment.setitem(sys.modules, "opentelemetry.instrumentation.fastapi", None)  # as if not installed
    app = FastAPI()
    with caplog.at_level(logging.WARNING, logger="app.core.tracing"):
        assert tracing.configure_tracing(app) is None
    [record] = [r for r in caplog.records if r.name == "app.core.tracing"]
    assert "otel" in record.getMessage() and record.levelno == logging.WARNING
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
