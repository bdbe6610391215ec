"""tenants create | list | show | update | disable | enable | delete | limits | usage: one service call each.

Tables for people, `--json` for scripts. Each command runs here or, given --url, over a gateway's admin API
(app/cli/ops.py); every change is audited ("cli" here, the admin token's caller remotely).
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError

from app.cli.common import CursorOpt, PageLimitOpt, fail, jsonable
from app.cli.ops import run_ops
from app.core.limits import LIMIT_NAMES, LimitsUpdate, describe, parse_limit_word
from app.core.pagination import DEFAULT_PAGE
from app.core.runtime import Kernel
from app.tenants.schemas import TenantOut
from app.tenants.service import TenantService

tenants_cli = typer.Typer(
    help="Manage tenants: create, list, show, update, disable, enable, delete, limits, usage.", no_args_is_help=True
)

TenantArg = Annotated[str, typer.Argument(help="Tenant id or name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# Commands whose answer is JSON already take --json too, so that every command does.
JsonAlwaysOpt = Annotated[bool, typer.Option("--json", help="Print JSON (this command always does).")]


def tenant_service(kernel: Kernel) -> TenantService:
    """The tenant service on a command's kernel (for commands that run only where the database is)."""
    return TenantService(kernel.sessions, kernel.keys, kernel.clock, kernel.settings.default_limits)


# --- output for people ----------------------------------------------------------------------------------------------
def when(unix: int | None) -> str:
    """A unix time for people (UTC, to the minute), or '-'."""
    if unix is None:
        return "-"
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%d %H:%MZ")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Plain text columns aligned with spaces (the last one unpadded)."""
    cells = [[str(h) for h in headers], *[["-" if c is None or c == "" else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)) + "  " + row[-1])


def print_fields(fields: Sequence[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        typer.echo(f"{name.ljust(width)}  {'-' if value is None or value == '' else value}")


def print_json(model: BaseModel) -> None:
    typer.echo(json.dumps(jsonable(model)))


def print_next(next_cursor: str | None) -> None:
    if next_cursor is not None:
        typer.echo(f"(more: --cursor {next_cursor})")


def _print_tenant(tenant: TenantOut) -> None:
    limits = tenant.limits.model_dump()
    print_fields(
        [
            ("id", tenant.id),
            ("name", tenant.name),
            ("status", tenant.status),
            ("created", when(tenant.created_at)),
            ("updated", when(tenant.updated_at)),
            *[(name, "unlimited" if limits[name] is None else limits[name]) for name in LIMIT_NAMES],
        ]
    )


def _show(tenant: TenantOut, as_json: bool) -> None:
    if as_json:
        print_json(tenant)
    else:
        _print_tenant(tenant)


# --- commands -------------------------------------------------------------------------------------------------------
@tenants_cli.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A unique tenant name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (tenant_id, name, key).")] = False,
) -> None:
    """Create a tenant (with the default limits) and print its first API key (shown once, stored only as a hash)."""

    created = run_ops(lambda ops: ops.create_tenant(name))
    tenant_id, tenant_name, key = created.id, created.name, created.key.key
    if as_json:
        typer.echo(json.dumps({"tenant_id": tenant_id, "name": tenant_name, "key": key}))
    else:
        typer.echo(f"tenant {tenant_name} created: id {tenant_id}\nAPI key (shown once, keep it safe): {key}")


@tenants_cli.command("list")
def list_tenants(
    name: Annotated[str | None, typer.Option("--name", help="Only tenants whose name holds this.")] = None,
    limit: PageLimitOpt = DEFAULT_PAGE,
    cursor: CursorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List tenants (oldest first, deleted ones left out), a page at a time."""
    page = run_ops(lambda ops: ops.list_tenants(limit, cursor, name))
    if as_json:
        print_json(page)
        return
    print_table(["ID", "NAME", "STATUS", "CREATED"], [[t.id, t.name, t.status, when(t.created_at)] for t in page.data])
    print_next(page.next_cursor)


@tenants_cli.command("show")
def show(tenant: TenantArg, as_json: JsonOpt = False) -> None:
    """Show a tenant: id, name, status and limits."""

    _show(run_ops(lambda ops: ops.tenant(tenant)), as_json)


@tenants_cli.command("update")
def update(
    tenant: TenantArg,
    name: Annotated[str, typer.Option("--name", help="The new name.")],
    as_json: JsonOpt = False,
) -> None:
    """Rename a tenant."""

    _show(run_ops(lambda ops: ops.update_tenant(tenant, name=name)), as_json)


@tenants_cli.command("disable")
def disable(tenant: TenantArg, as_json: JsonOpt = False) -> None:
    """Disable a tenant: every key of it is refused (401) until `enable`; its open tasks still settle."""

    _show(run_ops(lambda ops: ops.update_tenant(tenant, status="disabled")), as_json)


@tenants_cli.command("enable")
def enable(tenant: TenantArg, as_json: JsonOpt = False) -> None:
    """Enable a disabled tenant again: its keys work again (those neither revoked nor expired)."""

    _show(run_ops(lambda ops: ops.update_tenant(tenant, status="active")), as_json)


@tenants_cli.command("delete")
def delete(
    tenant: TenantArg,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: deleting cannot be undone.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a tenant for good: keys refused, gone from the ops surface; its ledger stays. `disable` is reversible."""
    if not yes:
        fail("deleting a tenant cannot be undone (use `disable` to stop it reversibly): pass --yes to delete it")

    _show(run_ops(lambda ops: ops.delete_tenant(tenant)), as_json)


def limit_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with one option per limit of app/core/limits.py (`--daily-images`, ...: a number, or 'unlimited'),
    handed to it as `given`: the options that were given, by limit name."""
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "given"]
    options = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                str | None, typer.Option(help=f"{describe(name)} A number, or 'unlimited'.", show_default=False)
            ],
        )
        for name in LIMIT_NAMES
    ]

    def with_limit_options(**values: Any) -> None:
        given = {name: values.pop(name) for name in LIMIT_NAMES}
        command(**values, given={name: value for name, value in given.items() if value is not None})

    with_limit_options.__name__ = command.__name__
    with_limit_options.__doc__ = command.__doc__
    with_limit_options.__signature__ = signature.replace(parameters=[*kept, *options])  # type: ignore[attr-defined]
    return with_limit_options


@tenants_cli.command("limits")
@limit_options
def limits(tenant: TenantArg, given: dict[str, str], as_json: JsonAlwaysOpt = True) -> None:
    """Show a tenant's limits, or set the ones given (others stay unchanged). Prints JSON."""
    update = _limits_update(given)
    if update.changes():
        print_json(run_ops(lambda ops: ops.set_limits(tenant, update)))
    else:
        print_json(run_ops(lambda ops: ops.limits(tenant)))


@tenants_cli.command("usage")
def usage(tenant: TenantArg, as_json: JsonAlwaysOpt = True) -> None:
    """Show a tenant's usage in the current UTC day and month, and its tasks in flight. Prints JSON."""
    print_json(run_ops(lambda ops: ops.usage(tenant)))


def _limits_update(given: dict[str, str]) -> LimitsUpdate:
    """The options as the ops API's update (same bounds); one line naming the option when a value is wrong."""
    try:
        return LimitsUpdate.model_validate({name: parse_limit_word(value) for name, value in given.items()})
    except ValidationError as e:
        name = str(e.errors()[0]["loc"][0])
        fail(f"--{name.replace('_', '-')} must be a non-negative integer or 'unlimited', not {given.get(name)!r}")
