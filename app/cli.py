"""The ops command line: serve, sandbox, migrate, tenants."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from app.config import Settings, SettingsError
from app.core.clock import utcnow
from app.core.errors import GatewayError
from app.core.files import write_private
from app.core.security import KeyMaterial

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

cli = typer.Typer(
    help="Seedream Gateway: a multi-tenant gateway for the Seedream 4.0 image API.",
    no_args_is_help=True,
    add_completion=False,
)
tenants_cli = typer.Typer(help="Manage tenants: create, limits, usage.", no_args_is_help=True)
cli.add_typer(tenants_cli, name="tenants")
quota_cli = typer.Typer(help="Quota bookkeeping.", no_args_is_help=True)
cli.add_typer(quota_cli, name="quota")
T = TypeVar("T")

HostOpt = Annotated[str | None, typer.Option(help="Interface to bind (default: GATEWAY_HOST or 127.0.0.1).")]
PortOpt = Annotated[int | None, typer.Option(help="Port to bind (default: GATEWAY_PORT or 8000).")]


def _settings(**overrides: object) -> Settings:
    settings = Settings()
    updates = {k: v for k, v in overrides.items() if v is not None}
    return settings.model_copy(update=updates) if updates else settings


def _fail(message: str) -> NoReturn:
    typer.echo(f"seedream-gateway: {message}", err=True)
    raise typer.Exit(code=2)


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


@cli.command()
def serve(host: HostOpt = None, port: PortOpt = None) -> None:
    """Run the gateway. With no configuration: SQLite ledger, built-in sandbox upstream, a demo tenant."""
    import uvicorn

    from app.core.db.migrate import upgrade
    from app.main import create_app, preflight

    settings = _settings(host=host, port=port)
    _logging(settings.log_level)
    try:
        resolved = settings.secrets
        if settings.should_auto_migrate:
            upgrade(settings.effective_database_url)
        # Checked here: raised inside the lifespan, uvicorn would print a traceback and exit 3.
        asyncio.run(preflight(settings))
        app = create_app(settings)
    except SettingsError as e:
        _fail(str(e))
        return
    if settings.zero_config:
        key = asyncio.run(_ensure_demo_tenant(settings))
        _print_banner(settings, key, resolved.admin_token)
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            proxy_headers=True,
            server_header=False,
        )
    except SettingsError as e:  # raised by the lifespan, e.g. an unmigrated database
        _fail(str(e))


@cli.command()
def sandbox(host: HostOpt = None, port: PortOpt = None) -> None:
    """Run the sandbox upstream (the upstream contract, with injectable faults) on its own port."""
    import uvicorn

    from app.sandbox.app import create_sandbox_app

    settings = _settings()
    _logging(settings.log_level)
    uvicorn.run(
        create_sandbox_app(),
        host=host or settings.host,
        port=port or 8100,
        log_level=settings.log_level.lower(),
    )


@cli.command()
def migrate() -> None:
    """Apply the database migrations (Alembic upgrade head)."""
    from app.core.db.migrate import upgrade

    settings = _settings()
    _logging(settings.log_level)
    upgrade(settings.effective_database_url)
    typer.echo("migrated to head")


@tenants_cli.command("create")
def tenants_create(
    name: Annotated[str, typer.Argument(help="A unique tenant name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (tenant_id, name, key).")] = False,
) -> None:
    """Create a tenant (with the default limits) and print its first API key (shown once, stored only as a hash)."""
    settings = _settings()
    tenant_id, key = _run(_create_tenant(settings, name))
    if as_json:
        typer.echo(json.dumps({"tenant_id": tenant_id, "name": name, "key": key}))
    else:
        typer.echo(f"tenant {name} created: id {tenant_id}\nAPI key (shown once, keep it safe): {key}")


LimitOpt = Annotated[str | None, typer.Option(help="A number, or 'unlimited'.", show_default=False)]


@tenants_cli.command("limits")
def tenants_limits(
    tenant: Annotated[str, typer.Argument(help="Tenant id or name.")],
    daily_images: LimitOpt = None,
    monthly_images: LimitOpt = None,
    max_in_flight: LimitOpt = None,
    submit_rpm: LimitOpt = None,
    query_rpm: LimitOpt = None,
) -> None:
    """Show a tenant's limits, or set the ones given (others stay unchanged). Prints JSON."""
    given = {
        "daily_images": daily_images,
        "monthly_images": monthly_images,
        "max_in_flight": max_in_flight,
        "submit_rpm": submit_rpm,
        "query_rpm": query_rpm,
    }
    changes = {name: _limit_value(name, value) for name, value in given.items() if value is not None}

    async def work(session: AsyncSession, _: KeyMaterial) -> dict[str, Any]:
        from app.tenants import service as tenant_service

        if changes:
            row = await tenant_service.set_limits(session, tenant, changes, utcnow())
        else:
            row = await tenant_service.get_tenant(session, tenant)
        return {"tenant_id": row.id, **tenant_service.limits_of(row)}

    typer.echo(json.dumps(_run(_in_session(_settings(), work))))


@tenants_cli.command("usage")
def tenants_usage(tenant: Annotated[str, typer.Argument(help="Tenant id or name.")]) -> None:
    """Show a tenant's usage in the current UTC day and month, and its tasks in flight. Prints JSON."""

    async def work(session: AsyncSession, _: KeyMaterial) -> dict[str, Any]:
        from app.ops_contract import UsageOut
        from app.quotas import service as quotas
        from app.tenants import service as tenant_service

        row = await tenant_service.get_tenant(session, tenant)
        return UsageOut.of(await quotas.usage(session, row, utcnow())).model_dump()

    typer.echo(json.dumps(_run(_in_session(_settings(), work))))


@quota_cli.command("check")
def quota_check(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (id or name).")] = None,
) -> None:
    """Verify that every quota counter equals the sum of its ledger entries; exit 1 on any drift."""

    async def work(session: AsyncSession, _: KeyMaterial) -> dict[str, Any]:
        from app.ops_contract import DriftReport
        from app.quotas import service as quotas
        from app.tenants import service as tenant_service

        tenant_id = (await tenant_service.get_tenant(session, tenant)).id if tenant else None
        return DriftReport.of(await quotas.drift(session, tenant_id)).model_dump()

    report = _run(_in_session(_settings(), work))
    typer.echo(json.dumps(report))
    if not report["ok"]:
        raise typer.Exit(code=1)


def _limit_value(name: str, value: str) -> int | None:
    if value.strip().lower() in ("unlimited", "none", "null"):
        return None
    if not value.strip().isdigit():
        _fail(f"--{name.replace('_', '-')} must be a non-negative integer or 'unlimited', not {value!r}")
    return int(value)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command's database work; expected failures become a one-line message and exit code 2."""
    try:
        return asyncio.run(coro)
    except SettingsError as e:
        _fail(str(e))
    except GatewayError as e:
        _fail(e.message)
    raise AssertionError("unreachable")


async def _in_session(settings: Settings, work: Callable[[AsyncSession, KeyMaterial], Awaitable[T]]) -> T:
    """One unit of work against the configured database (committed when `work` returns)."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from app.core.db.engine import create_engine, create_session_factory

    keys = KeyMaterial(settings.secrets.secret_key)
    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        async with create_session_factory(engine).begin() as session:
            return await work(session, keys)
    except (OperationalError, ProgrammingError) as e:
        raise SettingsError("The database is not migrated: run `seedream-gateway migrate` first.") from e
    finally:
        await engine.dispose()


async def _create_tenant(settings: Settings, name: str, key: str | None = None) -> tuple[str, str]:
    from app.tenants.service import create_tenant

    async def work(session: AsyncSession, keys: KeyMaterial) -> tuple[str, str]:
        tenant, plaintext = await create_tenant(session, keys, name, utcnow(), key=key, limits=settings.default_limits)
        return tenant.id, plaintext

    return await _in_session(settings, work)


async def _ensure_demo_tenant(settings: Settings) -> str:
    """The demo tenant's key, the same on every zero-config start (kept under data_dir, demo mode only)."""
    from app.core.security import new_tenant_key
    from app.tenants import repository as tenants_repo
    from app.tenants.service import authenticate, create_tenant

    path = settings.data_dir / "demo-tenant.json"
    stored: str | None = json.loads(path.read_text())["key"] if path.exists() else None

    async def work(session: AsyncSession, keys: KeyMaterial) -> str:
        if stored is not None:
            try:
                await authenticate(session, keys, f"Bearer {stored}", utcnow())
                return stored
            except GatewayError:
                pass  # the database was reset under the key file: make a new demo tenant
        name = "demo" if await tenants_repo.get_by_name(session, "demo") is None else f"demo-{secrets.token_hex(3)}"
        _, key = await create_tenant(
            session, keys, name, utcnow(), key=new_tenant_key(), limits=settings.default_limits
        )
        return key

    key = await _in_session(settings, work)
    if key != stored:
        write_private(path, json.dumps({"key": key}))
    return key


def _print_banner(settings: Settings, key: str, admin_token: str) -> None:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{host}:{settings.port}"
    print(
        f"""
Seedream Gateway (zero-config demo: SQLite at {settings.effective_database_url.split("///")[-1]}, built-in sandbox)
  API docs:     {base}/docs
  Tenant key:   {key}
  Admin token:  {admin_token}
  Try it:
    curl -s {base}/v1/images/generations -H 'Authorization: Bearer {key}' \\
      -H 'Content-Type: application/json' -d '{{"model":"doubao-seedream-4-0","prompt":"a red fox","n":1}}'
    curl -s {base}/v1/images/generations/<id> -H 'Authorization: Bearer {key}'
""",
        flush=True,
    )


def main() -> None:
    try:
        cli()
    except SettingsError as e:
        print(f"seedream-gateway: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
