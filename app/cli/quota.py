"""quota check: the books balance, or exit 1."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from app.cli.common import jsonable
from app.cli.ops import run_ops
from app.cli.tenants import JsonAlwaysOpt

quota_cli = typer.Typer(help="Quota bookkeeping.", no_args_is_help=True)


@quota_cli.command("check")
def check(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (id or name).")] = None,
    as_json: JsonAlwaysOpt = True,
) -> None:
    """Verify that every quota counter equals the sum of its ledger entries; exit 1 on any drift. Prints JSON."""
    report = run_ops(lambda ops: ops.drift(tenant))
    typer.echo(json.dumps(jsonable(report)))
    if not report.ok:
        raise typer.Exit(code=1)
