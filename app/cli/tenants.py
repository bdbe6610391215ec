"""tenants create | limits | usage: each command is one call of one service."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from app.cli.common import fail, jsonable, run_with_kernel, settings_with
from app.core.limits import LimitsUpdate, parse_limit_word
from app.quotas.schemas import UsageOut
from app.quotas.service import QuotaService
from app.runtime import Kernel
from app.tenants.service import TenantService

tenants_cli = typer.Typer(help="Manage tenants: create, limits, usage.", no_args_is_help=True)

TenantArg = Annotated[str, typer.Argument(help="Tenant id or name.")]
LimitOpt = Annotated[str | None, typer.Option(help="A number, or 'unlimited'.", show_default=False)]


def _tenants(kernel: Kernel) -> TenantService:
    return TenantService(kernel.sessions, kernel.keys, kernel.clock, kernel.settings.default_limits)


@tenants_cli.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A unique tenant name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (tenant_id, name, key).")] = False,
) -> None:
    """Create a tenant (with the default limits) and print its first API key (shown once, stored only as a hash)."""

    async def call(kernel: Kernel) -> tuple[str, str]:
        tenant, key = await _tenants(kernel).create(name)
        return tenant.id, key

    tenant_id, key = run_with_kernel(settings_with(), call)
    if as_json:
        typer.echo(json.dumps({"tenant_id": tenant_id, "name": name.strip(), "key": key}))
    else:
        typer.echo(f"tenant {name.strip()} created: id {tenant_id}\nAPI key (shown once, keep it safe): {key}")


@tenants_cli.command("limits")
def limits(
    tenant: TenantArg,
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
    update = _limits_update({name: value for name, value in given.items() if value is not None})

    async def call(kernel: Kernel) -> dict[str, Any]:
        service = _tenants(kernel)
        result = await (service.set_limits(tenant, update) if update.changes() else service.limits(tenant))
        return jsonable(result)

    typer.echo(json.dumps(run_with_kernel(settings_with(), call)))


@tenants_cli.command("usage")
def usage(tenant: TenantArg) -> None:
    """Show a tenant's usage in the current UTC day and month, and its tasks in flight. Prints JSON."""

    async def call(kernel: Kernel) -> dict[str, Any]:
        return jsonable(UsageOut.of(await QuotaService(kernel.sessions, kernel.clock).usage_of(tenant)))

    typer.echo(json.dumps(run_with_kernel(settings_with(), call)))


def _limits_update(given: dict[str, str]) -> LimitsUpdate:
    """The options as the ops API's update (same bounds); one line naming the option when a value is wrong."""
    try:
        return LimitsUpdate.model_validate({name: parse_limit_word(value) for name, value in given.items()})
    except ValidationError as e:
        name = str(e.errors()[0]["loc"][0])
        fail(f"--{name.replace('_', '-')} must be a non-negative integer or 'unlimited', not {given.get(name)!r}")
