"""Optional OpenTelemetry tracing: spans for the inbound request, the database statements it makes and the upstream
calls, exported over OTLP (http/protobuf).

On only when the standard variables ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set, `OTEL_SDK_DISABLED` not `true`, `OTEL_TRACES_EXPORTER` not `none`) and
the `otel` extra is installed; asked for without the extra, one warning and the gateway runs untraced. Off, nothing
of the SDK or the instrumentations is imported and no middleware is added. The SDK reads the other standard
variables itself: `OTEL_SERVICE_NAME` (else `seedream-gateway`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`...

Each app gets its own TracerProvider, passed to each instrumentation (the global provider is left alone), and
shut down (flushed) by the app's lifespan: several apps can be traced in one process (tests). What is instrumented
is instance-level only: the app (FastAPIInstrumentor.instrument_app), the upstream's aiohttp session (a trace
config of its own; not the webhook client, whose target URLs are tenants' own) and the app's database engine.

Nothing secret goes into a span: no header is recorded (and the ones that carry secrets are on the sanitize list
should an operator ask for headers with `OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`), SQL statements are recorded
without their parameters, query strings are dropped from the server span as from the access log, and the mounted
sandbox (its file URLs carry tokens) and the probe and metrics paths get no span at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.core import context
from app.core.db import driver

if TYPE_CHECKING:
    import aiohttp
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span, Tracer
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "seedream-gateway"
REQUEST_ID_ATTRIBUTE = "gateway.request_id"
# Regexes searched in the request's full URL (scheme://host/path): probes, the scrape, the zero-config sandbox.
EXCLUDED_URLS = r"^[a-z]+://[^/]+/(healthz|readyz|metrics)/?$,^[a-z]+://[^/]+/_sandbox(/|$)"
# Redacted should an operator capture headers (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*): keys and tokens.
SENSITIVE_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-sandbox-control-token")
_SANITIZE_FIELDS_ENV = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"


def tracing_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard OpenTelemetry variables ask for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def configure_tracing(app: FastAPI, *, span_processor: SpanProcessor | None = None) -> Tracing | None:
    """Instrument `app` when tracing is asked for (or a span processor is given: tests), else None.

    The caller adds `RequestIdOnSpan` inside its request-id middleware, instruments the engine and the upstream
    client once they exist, and awaits `Tracing.aclose` at shutdown."""
    if span_processor is None and not tracing_requested():
        return None
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        if span_processor is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            span_processor = BatchSpanProcessor(OTLPSpanExporter())
    except ImportError as e:
        log.warning(
            "OpenTelemetry tracing is asked for (OTEL_EXPORTER_OTLP_*ENDPOINT) but its packages are not installed "
            "(%s): install the `otel` extra (pip install 'seedream-gateway[otel]'); running without tracing",
            e.name or e,
        )
        return None

    resource = Resource.create({"service.version": app.version})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    # Shut down by the lifespan, not at exit: an atexit hook would keep every provider (and its spans) alive.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(span_processor)
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        meter_provider=NoOpMeterProvider(),  # the metrics are Prometheus' (app/core/metrics.py)
        excluded_urls=",".join(filter(None, (EXCLUDED_URLS, _excluded_urls_from_environment()))),
        server_request_hook=_drop_query_string,
        http_capture_headers_sanitize_fields=_sanitize_fields(),
        exclude_spans=["receive", "send"],  # one span per request, not one per ASGI message
    )
    return Tracing(app, provider)


class Tracing:
    """The live tracing of one app: its provider and what was instrumented with it."""

    def __init__(self, app: FastAPI, provider: TracerProvider) -> None:
        self.app = app
        self.provider = provider
        self._engines: list[Engine] = []

    def instrument_engine(self, engine: AsyncEngine) -> None:
        """A span per statement (`db.system`, `db.statement` without its parameters), inside a trace only: the
        background loops' idle polls would otherwise make a trace each, forever."""
        from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
        from opentelemetry.instrumentation.sqlalchemy.version import __version__
        from opentelemetry.metrics import NoOpUpDownCounter

        tracer = self.provider.get_tracer("opentelemetry.instrumentation.sqlalchemy", __version__)
        # Neither SQLAlchemyInstrumentor().instrument(), which patches create_engine and Engine.connect process-wide
        # and runs once per process, nor sqlcommenter: listeners on this engine alone.
        EngineTracer(  # type: ignore[no-untyped-call]
            _InTraceOnly(tracer), engine.sync_engine, NoOpUpDownCounter("db.client.connections.usage")
        )
        self._engines.append(engine.sync_engine)
        # The statements sent on the driver's connection (app/core/db/driver.py) get the same span.
        driver.observe(engine, span=_statement_spans(_InTraceOnly(tracer), engine))

    def upstream_trace_configs(self) -> list[aiohttp.TraceConfig]:
        """For the upstream's session: a client span per call (method, URL, status; headers only as the operator's
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_* ask, the secret ones redacted), the trace context sent
        along. It lives and goes with the session."""
        from opentelemetry.instrumentation.aiohttp_client import create_trace_config
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.util.http import (
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST,
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE,
            get_custom_headers,
        )

        return [
            create_trace_config(
                tracer_provider=self.provider,
                meter_provider=NoOpMeterProvider(),
                captured_request_headers=get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST),
                captured_response_headers=get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE),
                sensitive_headers=_sanitize_fields(),
            )
        ]

    async def aclose(self) -> None:
        """Undo the engine's instrumentation, then export what is left and stop (off the event loop: the exporter
        blocks on its network calls)."""
        for engine in self._engines:
            _remove_engine_listeners(engine)
        self._engines.clear()
        await asyncio.to_thread(self.provider.shutdown)


class RequestIdOnSpan:
    """ASGI middleware, added inside Observe (which sets the request id) when tracing is on: the server span gets
    the request id as `gateway.request_id`, the status calls answered before routing included."""

    def __init__(self, app: ASGIApp) -> None:
        from opentelemetry.trace import get_current_span

        self.app = app
        self._current_span = get_current_span

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request_id = context.current_request_id()
            span = self._current_span()
            if request_id is not None and span.is_recording():
                span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
        await self.app(scope, receive, send)


class _InTraceOnly:
    """The tracer the SQLAlchemy instrumentation is given: a statement outside any trace gets no span."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> Span:
        from opentelemetry.trace import INVALID_SPAN, get_current_span

        if not get_current_span().get_span_context().is_valid:
            return INVALID_SPAN
        return self._tracer.start_span(name, *args, **kwargs)


def _statement_spans(tracer: _InTraceOnly, engine: AsyncEngine) -> Callable[[str], AbstractContextManager[Any]]:
    """The span the SQLAlchemy instrumentation makes of a statement (its name, `db.system`, `db.statement` without
    parameters, the server's address), for a statement that does not pass through SQLAlchemy's execution layer."""
    from opentelemetry.trace import SpanKind, Status, StatusCode, use_span

    url = engine.url
    common: dict[str, Any] = {"db.system": "postgresql", "db.name": url.database or ""}
    if url.host:
        common["net.peer.name"] = url.host
    if url.port:
        common["net.peer.port"] = url.port

    @contextlib.contextmanager
    def span(sql: str) -> Iterator[None]:
        words = sql.split(None, 1)
        name = " ".join(filter(None, (words[0] if words else "", url.database)))
        current = tracer.start_span(name, kind=SpanKind.CLIENT, attributes={**common, "db.statement": sql})
        try:
            with use_span(current, end_on_exit=False):
                yield
        except BaseException as e:
            if current.is_recording():
                current.set_status(Status(StatusCode.ERROR, type(e).__name__))  # the type only: no value
            raise
        finally:
            current.end()

    return span


def _drop_query_string(span: Span, scope: MutableMapping[str, Any]) -> None:
    """As the access log does: the server span keeps the path, not the query string."""
    if not scope.get("query_string") or not span.is_recording():
        return
    attributes: Mapping[str, Any] = getattr(span, "attributes", None) or {}
    for name in ("http.url", "url.full"):
        if name in attributes:
            span.set_attribute(name, str(attributes[name]).split("?", 1)[0])
    if "http.target" in attributes:
        span.set_attribute("http.target", scope["path"])
    if "url.query" in attributes:
        span.set_attribute("url.query", "REDACTED")


def _excluded_urls_from_environment() -> str:
    return os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", os.environ.get("OTEL_PYTHON_EXCLUDED_URLS", ""))


def _sanitize_fields() -> list[str]:
    configured = [f.strip() for f in os.environ.get(_SANITIZE_FIELDS_ENV, "").split(",") if f.strip()]
    return [*configured, *(h for h in SENSITIVE_HEADERS if h not in {f.lower() for f in configured})]


def _remove_engine_listeners(engine: Engine) -> None:
    """The listeners EngineTracer put on this engine (its own cleanup removes those of every engine)."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from sqlalchemy import event

    registered: list[Any] = getattr(EngineTracer, "_remove_event_listener_params", [])
    for entry in list(registered):
        target, identifier, listener = entry
        if target() is engine:
            if event.contains(engine, identifier, listener):
                event.remove(engine, identifier, listener)
            registered.remove(entry)
