"""What every command shares: settings with overrides, one-line failures, running one service call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from sqlalchemy.exc import OperationalError, ProgrammingError

from app.config import Settings
from app.core.db.migrate import DatabaseNotMigrated
from app.core.errors import GatewayError, SettingsError
from app.core.pagination import MAX_PAGE
from app.runtime import Kernel, kernel_for_command

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


def run_with_kernel(settings: Settings, call: Callable[[Kernel], Awaitable[T]]) -> T:
    """Run one service call on a one-connection kernel; expected failures become one line and exit code 2."""

    async def main() -> T:
        async with kernel_for_command(settings) as kernel:
            try:
                return await call(kernel)
            except (OperationalError, ProgrammingError) as e:  # no tables: the schema was never created
                raise DatabaseNotMigrated() from e

    try:
        return asyncio.run(main())
    except SettingsError as e:
        fail(str(e))
    except GatewayError as e:
        fail(e.message)


def jsonable(model: Any) -> dict[str, Any]:
    """A pydantic model's JSON-ready dict."""
    dumped: dict[str, Any] = model.model_dump(mode="json")
    return dumped
