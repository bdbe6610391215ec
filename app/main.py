"""create_app(): lifespan, middleware, error handlers, routers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import redis.asyncio
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError, ProgrammingError

from app.config import Settings, SettingsError
from app.contract import ErrorEnvelope
from app.core.body_limit import BodySizeLimit
from app.core.clock import Clock, utcnow
from app.core.db.engine import create_engine, create_session_factory
from app.core.db.migrate import is_at_head
from app.core.error_handlers import install_error_handlers
from app.core.security import KeyMaterial
from app.health import router as health
from app.quotas import admin_router as admin_quota
from app.quotas import router as usage
from app.quotas.rate_limits import RateLimitService, RedisWindowStore, SqlWindowStore
from app.state import GatewayState
from app.tasks import router as generations
from app.tasks.service import TaskService
from app.tasks.worker import TaskPoller
from app.tenants import admin_router as admin_tenants
from app.uploads import router as uploads
from app.uploads.service import UploadService
from app.upstream.base import UpstreamAdapter
from app.upstream.pool import UpstreamKeyPool
from app.upstream.toapis import ToAPIsAdapter, build_http_client

log = logging.getLogger("app")

SANDBOX_MOUNT = "/_sandbox"
SANDBOX_DEMO_UPSTREAM_KEY = "sk-sandbox-demo"


def upstream_base_url(settings: Settings) -> str:
    """The configured upstream, or the sandbox mounted inside this very server in zero-config mode."""
    if settings.upstream_base_url:
        return settings.upstream_base_url
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}{SANDBOX_MOUNT}"


def configured_upstream_keys(settings: Settings) -> list[str]:
    keys = [k.get_secret_value() for k in settings.upstream_keys]
    if not keys and settings.zero_config:
        keys = [SANDBOX_DEMO_UPSTREAM_KEY]
    return keys


async def preflight(settings: Settings) -> None:
    """What `serve` checks before binding a port, so that a misconfiguration is one line instead of a traceback
    from inside the lifespan: the schema is at head and the stored upstream keys open with the secret key."""
    url = settings.effective_database_url
    if not await is_at_head(url):
        raise SettingsError("The database is not migrated: run `seedream-gateway migrate` first.")
    engine = create_engine(url, pool_size=1)
    try:
        async with create_session_factory(engine).begin() as session:
            await UpstreamKeyPool().load(
                session, KeyMaterial(settings.secrets.secret_key), configured_upstream_keys(settings), utcnow()
            )
    finally:
        await engine.dispose()


def create_app(
    settings: Settings | None = None,
    *,
    adapter: UpstreamAdapter | None = None,
    clock: Clock = utcnow,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """Build the gateway. Tests inject an adapter, a transport or a clock; production passes only settings."""
    settings = settings or Settings()
    secrets = settings.secrets  # fail before serving anything when a secret is missing

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.effective_database_url, pool_size=settings.db_pool_size)
        sessions = create_session_factory(engine)
        keys = KeyMaterial(secrets.secret_key)
        upstream = adapter or ToAPIsAdapter(
            build_http_client(
                upstream_base_url(settings),
                user_agent=settings.user_agent,
                timeout_s=settings.upstream_timeout_s,
                connect_timeout_s=settings.upstream_connect_timeout_s,
                max_connections=settings.upstream_max_connections,
                transport=upstream_transport,
            )
        )
        pool = UpstreamKeyPool()
        try:
            async with sessions.begin() as session:
                await pool.load(session, keys, configured_upstream_keys(settings), clock())
        except (OperationalError, ProgrammingError) as e:
            await upstream.aclose()
            await engine.dispose()
            raise SettingsError("The database is not migrated: run `seedream-gateway migrate` first.") from e
        refresh = dt.timedelta(seconds=settings.status_refresh_interval_s)
        redis_store = RedisWindowStore(redis.asyncio.from_url(settings.redis_url)) if settings.redis_url else None
        app.state.gateway = GatewayState(
            settings=settings,
            engine=engine,
            sessions=sessions,
            keys=keys,
            adapter=upstream,
            pool=pool,
            tasks=TaskService(sessions, upstream, pool, clock, refresh, quotas_enabled=settings.quotas_enabled),
            uploads=UploadService(upstream, pool),
            rate_limits=RateLimitService(redis_store or SqlWindowStore(sessions), clock),
            clock=clock,
        )
        poller = None
        if settings.poll_interval_s > 0:
            poller = asyncio.create_task(
                TaskPoller(app.state.gateway.tasks, settings.poll_interval_s, settings.submit_deadline_s).run_forever(),
                name="task-poller",
            )
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await upstream.aclose()
            if redis_store is not None:
                await redis_store.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Seedream Gateway",
        version="0.1.0",
        description="The Seedream 4.0 task API (ToAPIs contract) for tenants: same requests, same answers, "
        'your own key. Errors use `{"error": {"code", "message", "type", "param"}}`.',
        lifespan=lifespan,
        # Validation failures answer 400 in the error envelope (install_error_handlers): document 422 with the
        # envelope too, instead of FastAPI's HTTPValidationError. 422 is the upstream's content_policy_violation.
        responses={422: {"model": ErrorEnvelope, "description": "Refused content (content_policy_violation)"}},
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    app.include_router(generations.router)
    app.include_router(uploads.router)
    app.include_router(usage.router)
    app.include_router(health.router)
    app.include_router(admin_tenants.router)
    app.include_router(admin_quota.router)
    if settings.zero_config:
        from app.sandbox.app import create_sandbox_app

        app.mount(SANDBOX_MOUNT, create_sandbox_app())
    return app
