"""The ops command line: serve, sandbox, migrate, tenants."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
from typing import Annotated

import typer

from app.config import Settings, SettingsError

cli = typer.Typer(
    help="Seedream Gateway: a multi-tenant gateway for the Seedream 4.0 image API.",
    no_args_is_help=True,
    add_completion=False,
)
tenants_cli = typer.Typer(help="Manage tenants.", no_args_is_help=True)
cli.add_typer(tenants_cli, name="tenants")

HostOpt = Annotated[str | None, typer.Option(help="Interface to bind (default: GATEWAY_HOST or 127.0.0.1).")]
PortOpt = Annotated[int | None, typer.Option(help="Port to bind (default: GATEWAY_PORT or 8000).")]


def _settings(**overrides: object) -> Settings:
    settings = Settings()
    updates = {k: v for k, v in overrides.items() if v is not None}
    return settings.model_copy(update=updates) if updates else settings


def _fail(message: str) -> None:
    typer.echo(f"seedream-gateway: {message}", err=True)
    raise typer.Exit(code=2)


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command()
def serve(host: HostOpt = None, port: PortOpt = None) -> None:
    """Run the gateway. With no configuration: SQLite ledger, built-in sandbox upstream, a demo tenant."""
    import uvicorn

    from app.main import create_app

    settings = _settings(host=host, port=port)
    _logging(settings.log_level)
    try:
        resolved = settings.secrets
        if settings.should_auto_migrate:
            from app.db.migrate import upgrade

            upgrade(settings.effective_database_url)
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
    from app.db.migrate import upgrade

    settings = _settings()
    _logging(settings.log_level)
    upgrade(settings.effective_database_url)
    typer.echo("migrated to head")


@tenants_cli.command("create")
def tenants_create(
    name: Annotated[str, typer.Argument(help="A unique tenant name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (tenant_id, name, key).")] = False,
) -> None:
    """Create a tenant and print its first API key (shown once, stored only as a hash)."""
    settings = _settings()
    try:
        settings.secrets  # noqa: B018  (fail early with the one-line reason)
        tenant_id, key = asyncio.run(_create_tenant(settings, name))
    except SettingsError as e:
        _fail(str(e))
        return
    except Exception as e:
        from app.errors import GatewayError

        if isinstance(e, GatewayError):
            _fail(e.message)
            return
        raise
    if as_json:
        typer.echo(json.dumps({"tenant_id": tenant_id, "name": name, "key": key}))
    else:
        typer.echo(f"tenant {name} created: id {tenant_id}\nAPI key (shown once, keep it safe): {key}")


async def _create_tenant(settings: Settings, name: str, key: str | None = None) -> tuple[str, str]:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from app.db.engine import create_engine, create_session_factory
    from app.security import KeyMaterial
    from app.services.tenants import create_tenant
    from app.timeutil import utcnow

    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        async with create_session_factory(engine).begin() as session:
            tenant, plaintext = await create_tenant(
                session, KeyMaterial(settings.secrets.secret_key), name, utcnow(), key=key, limits=settings.default_limits
            )
        return tenant.id, plaintext
    except (OperationalError, ProgrammingError) as e:
        raise SettingsError("The database is not migrated: run `seedream-gateway migrate` first.") from e
    finally:
        await engine.dispose()


async def _ensure_demo_tenant(settings: Settings) -> str:
    """The demo tenant's key, the same on every zero-config start (kept under data_dir, demo mode only)."""
    path = settings.data_dir / "demo-tenant.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored["key"]
    from app.security import new_tenant_key

    key = new_tenant_key()
    try:
        await _create_tenant(settings, "demo", key)
    except Exception as e:
        from app.errors import Conflict

        if not isinstance(e, Conflict):
            raise
        key = new_tenant_key()  # a "demo" tenant exists without its key file: make a fresh one
        await _create_tenant(settings, f"demo-{secrets.token_hex(3)}", key)
    path.write_text(json.dumps({"key": key}))
    path.chmod(0o600)
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
