"""serve, sandbox, migrate: the commands that run something."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
from typing import Annotated, Any

import typer
from sqlalchemy.engine import make_url

from app.cli.common import HostOpt, PortOpt, fail, run_with_kernel, settings_with, with_database
from app.core.config import DEMO_SECRETS_FILE, Settings
from app.core.db import embedded
from app.core.db.errors import describe, is_database_unavailable
from app.core.errors import SecretKeyMismatch, SettingsError
from app.core.files import write_private
from app.core.logs import setup_logging
from app.core.metrics import MULTIPROC_ENV
from app.core.net import local_host_for
from app.core.runtime import Kernel
from app.tenants.service import DEMO_KEY_FILE, TenantService

SANDBOX_DEFAULT_PORT = 8100
# What each worker of `serve --workers N` imports and calls to build its own app (a uvicorn factory).
WORKER_APP = "app.main:app_from_environment"

SandboxPortOpt = Annotated[int | None, typer.Option(help=f"Port to bind (default: {SANDBOX_DEFAULT_PORT}).")]
WorkersOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Worker processes, each with its own pools and loops (default: GATEWAY_WORKERS or 1)."),
]


def register(cli: typer.Typer) -> None:
    cli.command()(serve)
    cli.command()(sandbox)
    cli.command()(migrate)


def serve(host: HostOpt = None, port: PortOpt = None, workers: WorkersOpt = None) -> None:
    """Run the gateway. With no configuration: an embedded PostgreSQL under ./data, the built-in sandbox upstream,
    a demo tenant."""
    import uvicorn

    from app.core.db.migrate import upgrade
    from app.core.http_protocol import server_options
    from app.main import create_app, preflight

    settings = settings_with(host=host, port=port, workers=workers)
    setup_logging(settings.log_level, settings.log_format)
    if settings.workers > 1 and settings.zero_config:
        fail(
            f"{settings.workers} workers need an upstream of their own (GATEWAY_UPSTREAM_BASE_URL): the built-in "
            "sandbox keeps its tasks in one process's memory (run `seedream-gateway sandbox` apart and point at it)"
        )
    # Everything up to the banner is done once, here, whatever the number of workers.
    demo_ledger = not settings.database_url  # the embedded one under data_dir, which the demo may have made
    try:
        resolved = settings.secrets
        ledger = _ledger(settings)
        settings = with_database(settings)  # without GATEWAY_DATABASE_URL: the embedded one, started and migrated
        if settings.should_auto_migrate:
            upgrade(settings.database_url)
        # Checked here: raised inside the lifespan, uvicorn would print a traceback and exit 3.
        try:
            asyncio.run(preflight(settings))
        except Exception as e:
            if not is_database_unavailable(e):
                raise
            fail(f"database unavailable: {describe(e)}")
        app = create_app(settings)  # with several workers, only a check: each of them builds its own
    except SettingsError as e:
        fail(_explained(e, settings, demo_ledger))
    if settings.zero_config:
        key = _ensure_demo_key(settings)
        _print_banner(settings, key, resolved.admin_token, ledger)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "proxy_headers": True,
        # The app writes one access line per request (app/core/observe.py), in GATEWAY_LOG_FORMAT, with its request
        # id; uvicorn's own lines go through the root logger set up above (no logging config of its own).
        "access_log": False,
        "log_config": None,
        "server_header": False,
        # On SIGTERM uvicorn stops accepting, lets the requests in flight finish (cancelled after this long), then
        # runs the lifespan's shutdown, which stops the background loops and closes the pools.
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
        # uvicorn's HTTP/1.1 protocol with the request head bounded (431 over it, app/core/http_protocol.py).
        **server_options(),
    }
    if settings.workers > 1:
        _serve_workers(settings, options)
        return
    try:
        if settings.admin_port is None:
            uvicorn.run(app, **options)
        else:  # one server, two sockets: the tenants' and the admin surface's (app/core/admin_port.py)
            config = uvicorn.Config(app, **options)
            uvicorn.Server(config).run(sockets=[config.bind_socket(), _admin_socket(settings)])
    except SettingsError as e:  # raised by the lifespan, e.g. an unmigrated database
        fail(str(e))


def _admin_socket(settings: Settings) -> socket.socket:
    """The admin surface's listening socket (GATEWAY_ADMIN_HOST:GATEWAY_ADMIN_PORT)."""
    import uvicorn

    assert settings.admin_port is not None
    return uvicorn.Config(WORKER_APP, host=settings.admin_host, port=settings.admin_port).bind_socket()


def _serve_workers(settings: Settings, options: dict[str, Any]) -> None:
    """Serve with settings.workers processes, as `uvicorn.run(WORKER_APP, factory=True, workers=N)` would.

    uvicorn's supervisor (this process) binds the port once and spawns the workers; each imports WORKER_APP and
    builds its own app, kernel and background loops from the environment. The supervisor replaces a worker that
    dies, and on SIGTERM or SIGINT passes SIGTERM on to every worker and waits for them (each shuts down as one
    process does), then exits 0. Unlike uvicorn.run, a worker that cannot start is an exit code 2 here, not 0.
    """
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    # Spawned processes start with this environment: the command line's options go there, so every worker (and
    # any worker the supervisor starts later) reads the settings this process runs with. Nothing else needs
    # passing on: outside the zero-config mode (refused above) the secrets come from the environment or .env.
    os.environ["GATEWAY_HOST"] = settings.host
    os.environ["GATEWAY_PORT"] = str(settings.port)
    os.environ["GATEWAY_WORKERS"] = str(settings.workers)
    if settings.admin_port is not None:
        os.environ["GATEWAY_ADMIN_HOST"] = settings.admin_host
        os.environ["GATEWAY_ADMIN_PORT"] = str(settings.admin_port)
    os.environ["GATEWAY_DATABASE_URL"] = settings.database_url  # the embedded server's too: this process runs it
    # Every worker writes its metrics under one fresh directory, which /metrics sums (app/core/metrics.py); set
    # before the workers start, as prometheus-client reads it when a worker imports it.
    metrics_dir = tempfile.mkdtemp(prefix="seedream-gateway-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    config = uvicorn.Config(WORKER_APP, factory=True, workers=settings.workers, **options)
    sockets = [config.bind_socket()]
    if settings.admin_port is not None:
        sockets.append(_admin_socket(settings))
    supervisor = Multiprocess(config, sockets=sockets)
    try:
        supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        fail("a worker process could not start (its log lines are above)")


def sandbox(host: HostOpt = None, port: SandboxPortOpt = None) -> None:
    """Run the sandbox upstream (the upstream contract, with injectable faults) on its own port."""
    import uvicorn

    from app.core import metrics
    from app.core.observe import Observe
    from app.sandbox.app import create_sandbox_app

    settings = settings_with()
    setup_logging(settings.log_level, settings.log_format)
    metrics.configure(max_tenants=0, enabled=False)  # the sandbox serves no /metrics
    # As `serve`: the access lines are Observe's, in GATEWAY_LOG_FORMAT, with the gateway's request id and the
    # capability URLs' tokens left out; uvicorn's would carry the tokens, in a format of its own.
    uvicorn.run(
        Observe(create_sandbox_app()),
        host=host or settings.host,
        port=port or SANDBOX_DEFAULT_PORT,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,
    )


def migrate() -> None:
    """Apply the database migrations (Alembic upgrade head)."""
    from app.core.db.migrate import upgrade

    settings = settings_with()
    setup_logging(settings.log_level, settings.log_format)
    # The embedded database is migrated here below, not also on its way (auto_migrate off).
    settings = with_database(settings.model_copy(update={"auto_migrate": False}))
    upgrade(settings.database_url)
    typer.echo("migrated to head")


def _explained(error: SettingsError, settings: Settings, embedded_ledger: bool) -> str:
    """The refusal, and where the demo's secret key is when the ledger is the demo's (moving from the demo to a
    real upstream with the same ./data)."""
    demo = settings.data_dir / DEMO_SECRETS_FILE
    if not isinstance(error, SecretKeyMismatch) or settings.zero_config or not embedded_ledger or not demo.exists():
        return str(error)
    return (
        f"{error} This data directory was the demo's: its generated secret key is `secret_key` in {demo}. Set "
        "GATEWAY_SECRET_KEY to it, or put it in GATEWAY_PREVIOUS_SECRET_KEYS and run `seedream-gateway secrets "
        "rekey`; or start the real gateway on another GATEWAY_DATA_DIR (or GATEWAY_DATABASE_URL)."
    )


def _ensure_demo_key(settings: Settings) -> str:
    """The demo tenant's key, the same on every zero-config start (kept under data_dir, demo mode only)."""
    path = settings.data_dir / DEMO_KEY_FILE
    stored: str | None = json.loads(path.read_text())["key"] if path.exists() else None

    async def call(kernel: Kernel) -> str:
        service = TenantService(kernel.sessions, kernel.keys, kernel.clock, settings.default_limits)
        return await service.ensure_demo_key(stored)

    key = run_with_kernel(settings, call)
    if key != stored:
        write_private(path, json.dumps({"key": key}))
    return key


def _ledger(settings: Settings) -> str:
    """Where the ledger is, for the banner: the embedded PostgreSQL's data folder, or the configured database."""
    if not settings.database_url:
        return f"the embedded PostgreSQL under {settings.data_dir / embedded.PGDATA}"
    url = make_url(settings.database_url)
    return f"PostgreSQL database {url.database} on {url.host or 'a local socket'}"


def _print_banner(settings: Settings, key: str, admin_token: str, ledger: str) -> None:
    base = f"http://{local_host_for(settings.host)}:{settings.port}"
    admin = base
    if settings.admin_port is not None:
        admin = f"http://{local_host_for(settings.admin_host)}:{settings.admin_port}"
    print(
        f"""
Seedream Gateway (zero-config demo: built-in sandbox upstream, ledger in {ledger})
  API docs:     {base}/docs
  Try it page:  {base}/
  Console:      {admin}/admin/ui (sign in with the admin token)
  Tenant key:   {key}
  Admin token:  {admin_token}
  Try it:
    curl -s {base}/v1/images/generations -H 'Authorization: Bearer {key}' \\
      -H 'Content-Type: application/json' -d '{{"model":"doubao-seedream-4-0","prompt":"a red fox","n":1}}'
    curl -s {base}/v1/images/generations/<id> -H 'Authorization: Bearer {key}'
""",
        flush=True,
    )
