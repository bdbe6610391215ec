"""create_app(): settings -> the kernel -> each feature's build function -> routers, middleware, error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy import event
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.cors import TenantCors
from app.audit import router as audit
from app.console import router as console
from app.contract import ErrorEnvelope
from app.core import metrics
from app.core.admin_port import AdminPort
from app.core.body_limit import UPLOAD_PATH, BodySizeLimit
from app.core.clock import Clock, utcnow
from app.core.config import Settings
from app.core.db.migrate import DatabaseNotMigrated, is_at_head
from app.core.error_handlers import install_error_handlers
from app.core.invalidation import Invalidator
from app.core.logs import setup_logging
from app.core.observe import Observe
from app.core.openapi import install_openapi
from app.core.runtime import build_kernel, kernel_for_command
from app.core.tracing import RequestIdOnSpan, configure_tracing
from app.frontends import page as try_page
from app.frontends import router as tokens
from app.health import router as health
from app.metrics import router as metrics_router
from app.metrics.gauges import Gauges
from app.models import Task
from app.quotas import admin_router as admin_quota
from app.quotas import router as usage
from app.quotas.feature import build_quotas
from app.results import admin_router as admin_results
from app.results import router as results_router
from app.results.feature import build_results
from app.tasks import admin_router as admin_tasks
from app.tasks import events_router as generation_events
from app.tasks import router as generations
from app.tasks.events import TaskEvents
from app.tasks.fast_path import StatusFastPath, SubmitFastPath
from app.tasks.feature import build_tasks
from app.tenants import admin_router as admin_tenants
from app.tenants.service import TenantService
from app.uploads import router as uploads
from app.uploads.service import UploadService
from app.upstream import admin_router as admin_upstream
from app.upstream.base import UpstreamAdapter
from app.upstream.feature import SANDBOX_MOUNT, build_upstream, load_pool
from app.webhooks import admin_router as admin_webhooks
from app.webhooks.feature import build_webhooks

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor


async def preflight(settings: Settings) -> None:
    """What `serve` checks before binding a port, so that a misconfiguration is one line instead of a traceback
    from inside the lifespan: the schema is at head and the stored upstream keys open with the secret key."""
    if not await is_at_head(settings.database_url):
        raise DatabaseNotMigrated()
    async with kernel_for_command(settings) as kernel:
        await load_pool(kernel)


async def _count_task_end(session: AsyncSession, task: Task, _tenant_webhook_url: str | None) -> None:
    """A task's end, counted once its transaction commits (a rolled-back end is not one)."""
    tenant_id, status = task.tenant_id, str(getattr(task.status, "value", task.status))
    event.listen(session.sync_session, "after_commit", lambda _: metrics.task_ended(tenant_id, status), once=True)


def app_from_environment() -> FastAPI:
    """The gateway as each worker of `serve --workers N` builds it (`app.main:app_from_environment`, a uvicorn
    factory): settings from the environment and `.env`, where the parent process put its command-line options
    before spawning the workers. The parent did the once-only work (migrations, preflight) before."""
    settings = Settings()
    setup_logging(settings.log_level, settings.log_format)  # a spawned worker starts with Python's default logging
    return create_app(settings)


def create_app(
    settings: Settings | None = None,
    *,
    adapter: UpstreamAdapter | None = None,
    clock: Clock = utcnow,
    span_processor: SpanProcessor | None = None,
) -> FastAPI:
    """Build the gateway. Tests inject an adapter, a clock or a span processor (which turns tracing on), and point
    `settings.upstream_base_url` at their upstream; production passes only settings."""
    settings = settings or Settings()
    settings.secrets  # noqa: B018 - fail before serving anything when a secret is missing
    metrics.configure(max_tenants=settings.metrics_max_tenants, enabled=settings.metrics_enabled)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            kernel = build_kernel(settings, clock=clock)
            if tracing is not None:
                stack.push_async_callback(tracing.aclose)  # last: the spans of everything closed before it go out
                tracing.instrument_engine(kernel.engine)
            stack.push_async_callback(kernel.aclose)
            invalidator = Invalidator(kernel.sessions, kernel.clock)
            app.state.invalidator = invalidator
            try:
                upstream = await build_upstream(kernel, adapter=adapter, invalidator=invalidator, tracing=tracing)
            except (OperationalError, ProgrammingError) as e:
                raise DatabaseNotMigrated() from e
            stack.push_async_callback(upstream.aclose)
            quotas = build_quotas(kernel)
            stack.push_async_callback(quotas.aclose)
            tasks = build_tasks(kernel, upstream)
            webhooks = build_webhooks(kernel, invalidator=invalidator)
            tasks.service.on_end(webhooks.service.task_ended)  # a task's end enqueues its events, in its transaction
            tasks.service.on_end(_count_task_end)
            # A completed task's images are copied into the organisation's store (app/results): enqueued in its end's
            # transaction, after webhooks (whose events then wait for the copies); shown as the kept copies' links.
            results = build_results(kernel, webhooks=webhooks.service)
            tasks.service.on_end(results.service.task_ended)
            tasks.service.images = results.service.shown
            app.state.results = results.service
            app.state.webhooks = webhooks.service
            app.state.kernel = kernel
            app.state.upstream = upstream
            tenants = TenantService(
                kernel.sessions, kernel.keys, kernel.clock, settings.default_limits, invalidator=invalidator
            )
            app.state.tenants = tenants
            app.state.quotas = quotas.service
            app.state.rate_limits = quotas.rate_limits
            app.state.tasks = tasks.service
            app.state.task_events = TaskEvents(
                tasks.service,
                poll_interval_s=settings.events_poll_interval_s,
                heartbeat_s=settings.events_heartbeat_s,
            )
            app.state.uploads = UploadService(
                upstream.adapter, upstream.pool_service, max_in_flight=settings.max_concurrent_uploads
            )
            invalidator.start()
            stack.push_async_callback(invalidator.stop)
            tenants.start()  # writes keys' last use every few seconds
            stack.push_async_callback(tenants.aclose)  # and what is left at shutdown, before the engine closes
            if settings.zero_config:  # the built-in sandbox lost the previous run's tasks with its memory
                await tasks.service.fail_lost_in_sandbox()
            tasks.start()
            stack.push_async_callback(tasks.stop)
            webhooks.start()
            stack.push_async_callback(webhooks.stop)
            results.start()
            stack.push_async_callback(results.stop)
            gauges = Gauges(kernel, upstream.pool, tasks.service, results=results.service)
            app.state.gauges = gauges
            if settings.metrics_enabled:
                gauges.start()
            stack.push_async_callback(gauges.stop)
            yield

    # /docs and /redoc with Swagger UI's and ReDoc's scripts shipped in the package (fastapi-offline), never a CDN:
    # on a closed network the pages render all the same. No validator badge (it would call validator.swagger.io).
    app = FastAPIOffline(
        static_url="/docs/assets",
        swagger_ui_parameters={"validatorUrl": None},
        title="Seedream Gateway",
        version="0.1.0",
        description="The Seedream 4.0 task API (ToAPIs contract) for tenants: same requests, same answers, "
        'your own key. Errors use `{"error": {"code", "message", "type", "param"}}`.',
        lifespan=lifespan,
        # Validation failures answer 400 in the error envelope (install_error_handlers): document 422 with the
        # envelope too, instead of FastAPI's HTTPValidationError. 422 is the upstream's content_policy_violation.
        responses={422: {"model": ErrorEnvelope, "description": "Refused content (content_policy_violation)"}},
        # FastAPI's own OpenTelemetry hooks stay off (tracing is app/core/tracing.py's): otherwise every request
        # asks the global OpenTelemetry providers whether they are configured, a few percent of a status call.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    install_openapi(app)
    # A submit by a known key is answered before routing, with the body BodySizeLimit has read (app/tasks/fast_path.py).
    app.add_middleware(SubmitFastPath, state=app.state)
    # Bodies read up to the limit before the app, the upload route's excepted (app/core/body_limit.py); in zero-config
    # mode the sandbox mounted here takes the gateway's own uploads.
    app.add_middleware(
        BodySizeLimit,
        max_body_bytes=settings.max_body_bytes,
        upload_paths=[SANDBOX_MOUNT + UPLOAD_PATH] if settings.zero_config else [],
    )
    # A warm status call is answered before routing (app/tasks/fast_path.py); the rest goes on.
    app.add_middleware(StatusFastPath, state=app.state)
    # CORS per tenant (app/access/cors.py), GATEWAY_CORS_ORIGINS the default. Added last, so outermost: the fast
    # paths' answers get CORS headers too.
    app.add_middleware(TenantCors, state=app.state, default=settings.cors_origins)
    # Optional OpenTelemetry tracing (app/core/tracing.py): None unless the OTEL_* variables ask for it. Its server
    # span wraps the whole stack, Observe included; the request id goes on it from inside Observe, which sets it.
    tracing = configure_tracing(app, span_processor=span_processor)
    app.state.tracing = tracing
    if tracing is not None:
        app.add_middleware(RequestIdOnSpan)
    if settings.admin_port is not None:  # /admin only on its own port, the rest only on the tenants' (a 404 else)
        app.add_middleware(AdminPort, admin_port=settings.admin_port)
    # Outermost of all: every answer (the fast path's, CORS preflights, errors) gets its request id, access line and
    # HTTP metrics.
    app.add_middleware(Observe)
    for router in (generations, uploads, usage, health, admin_tenants, admin_quota, admin_upstream, admin_tasks, audit):
        app.include_router(router.router)
    app.include_router(admin_webhooks.router)
    app.include_router(console.router)  # the ops console at /admin/ui (app/console)
    app.include_router(results_router.router)
    app.include_router(admin_results.router)
    app.include_router(generation_events.router)
    app.include_router(tokens.router)
    app.include_router(try_page.router)
    if settings.metrics_enabled:
        app.include_router(metrics_router.router)
    if settings.zero_config:
        from app.sandbox.app import create_sandbox_app

        app.mount(SANDBOX_MOUNT, create_sandbox_app())
    return app
