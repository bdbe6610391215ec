"""quota check: the books balance, or exit 1."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from app.cli.common import jsonable, run_with_kernel, settings_with
from app.core.runtime import Kernel
from app.quotas.schemas import DriftReport
from app.quotas.service import QuotaService

quota_cli = typer.Typer(help="Quota bookkeeping.", no_args_is_help=True)


@quota_cli.command("check")
def check(tenant: Annotated[str | None, typer.Option(help="Only this tenant (id or name).")] = None) -> None:
    """Verify that every quota counter equals the sum of its ledger entries; exit 1 on any drift."""

    async def call(kernel: Kernel) -> dict[str, Any]:
        return jsonable(DriftReport.of(await QuotaService(kernel.sessions, kernel.clock).drift(tenant)))

    report = run_with_kernel(settings_with(), call)
    typer.echo(json.dumps(report))
    if not report["ok"]:
        raise typer.Exit(code=1)
