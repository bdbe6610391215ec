"""What every command shares: settings with overrides, one-line failures, running one service call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from sqlalchemy.exc import OperationalError, ProgrammingError

from app.core.config import Settings
from app.core.db import embedded
from app.core.db.migrate import DatabaseNotMigrated, upgrade
from app.core.errors import GatewayError, SettingsError
from app.core.pagination import MAX_PAGE
from app.core.runtime import Kernel, kernel_for_command

T = TypeVar("T")

HostOpt = Annotated[str | None, typer.Option(help="Interface to bind (default: GATEWAY_HOST or 127.0.0.1).")]
PortOpt = Annotated[int | None, typer.Option(help="Port to bind (default: GATEWAY_PORT or 8000).")]
# A list's page: the service applies the one limit rule (app/core/pagination.py), as it does for the ops API.
PageLimitOpt = Annotated[int, typer.Option("--limit", help=f"Rows per page (1-{MAX_PAGE}).")]
CursorOpt = Annotated[str | None, typer.Option("--cursor", help="The next_cursor a previous page printed.")]


def settings_with(**overrides: object) -> Settings:
    """The environment's settings, with the command-line options that were given."""
    settings = Settings()
    updates = {k: v for k, v in overrides.items() if v is not None}
    return settings.model_copy(update=updates) if updates else settings


def fail(message: str) -> NoReturn:
    """Print `seedream-gateway: message` on stderr and exit 2."""
    typer.echo(f"seedream-gateway: {message}", err=True)
    raise typer.Exit(code=2)


def progress(line: str) -> None:
    """A step of a command's preparation, on stderr (stdout stays the command's answer, e.g. its JSON)."""
    typer.echo(f"seedream-gateway: {line}", err=True)


def with_database(settings: Settings, *, create: bool = True) -> Settings:
    """`settings` with the database to use: GATEWAY_DATABASE_URL's, or else the embedded PostgreSQL under data_dir
    (app/core/db/embedded.py), started unless it runs and migrated unless GATEWAY_AUTO_MIGRATE=false. `create`
    False (the ops commands): an embedded ledger that does not exist yet is a refusal, not a new empty one."""
    if settings.database_url:
        return settings
    if not create:
        require_ledger(settings)
    url = embedded.start(settings.data_dir, progress)
    if settings.should_auto_migrate:
        upgrade(url)
    return settings.model_copy(update={"database_url": url, "auto_migrate": False})  # migrated: nothing left to do


def require_ledger(settings: Settings) -> None:
    """Refuse (one line, exit 2) an ops command run where there is no gateway: no GATEWAY_DATABASE_URL and no
    embedded ledger under data_dir. It used to create a fresh, empty demo ledger wherever it was run."""
    if settings.database_url or (settings.data_dir / embedded.PGDATA).exists():
        return
    fail(
        f"no gateway here: GATEWAY_DATABASE_URL is not set and there is no ledger under "
        f"{settings.data_dir / embedded.PGDATA} (`serve` makes the demo's). Run this in the gateway's directory, "
        "set GATEWAY_DATABASE_URL, or reach a running gateway with --url and an admin token."
    )


# The gateway the root command's --url or --profile named (app/cli/ops.py `Remote`), None: this machine's.
_remote: Any = None


def set_remote(remote: Any) -> None:
    """Where this invocation's ops commands run (set once, by the root command)."""
    global _remote
    _remote = remote


def remote() -> Any:
    return _remote


def run_with_kernel(settings: Settings, call: Callable[[Kernel], Awaitable[T]]) -> T:
    """Run one service call on a one-connection kernel; expected failures become one line and exit code 2."""
    if _remote is not None:  # a command without a remote path must not quietly act on this machine instead
        fail("this command runs only where the gateway's database is (without --url or a profile)")

    async def main(settings: Settings) -> T:
        async with kernel_for_command(settings) as kernel:
            try:
                return await call(kernel)
            except (OperationalError, ProgrammingError) as e:  # no tables: the schema was never created
                raise DatabaseNotMigrated() from e

    try:
        if settings.zero_config:
            require_ledger(settings)  # before the secrets: the demo's would be generated here
        settings.secrets  # noqa: B018 - a missing secret fails before a database is started
        return asyncio.run(main(with_database(settings, create=False)))
    except SettingsError as e:
        fail(str(e))
    except GatewayError as e:
        fail(e.message)


def jsonable(model: Any) -> dict[str, Any]:
    """A pydantic model's JSON-ready dict."""
    dumped: dict[str, Any] = model.model_dump(mode="json")
    return dumped
