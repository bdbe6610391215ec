"""images show | retention | delete: a tenant's kept result images (app/results), one service call each.

Every change is audited with the actor "cli"; given --url, the commands run over a gateway's admin API
(app/cli/ops.py). `delete` ends the images' retention now: links to them stop at once,
and the running servers' sweepers delete them from the store within their poll interval.
"""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.common import fail
from app.cli.ops import run_ops
from app.cli.tenants import print_fields, print_json
from app.results.schemas import StorageOut

images_cli = typer.Typer(help="Kept result images: storage used, retention, deleting a tenant's.", no_args_is_help=True)

TenantArg = Annotated[str, typer.Argument(help="Tenant id or name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _print(storage: StorageOut, as_json: bool) -> None:
    if as_json:
        print_json(storage)
        return
    print_fields(
        [
            ("images kept", storage.images),
            ("bytes", storage.bytes),
            ("being copied", storage.pending),
            ("retention (days)", storage.retention_days),
        ]
    )


@images_cli.command("show")
def show(tenant: TenantArg, as_json: JsonOpt = False) -> None:
    """A tenant's kept images: how many, their size, its retention."""
    _print(run_ops(lambda ops: ops.images(tenant)), as_json)


@images_cli.command("retention")
def retention(
    tenant: TenantArg,
    days: Annotated[str, typer.Argument(help="Days to keep its images (0: none), or `default`.")],
    as_json: JsonOpt = False,
) -> None:
    """Set how long a tenant's images are kept; it applies to the images it already has."""
    if days != "default" and not days.isdigit():
        fail("DAYS is a whole number of days (0 keeps nothing) or `default`")
    value = None if days == "default" else int(days)
    _print(run_ops(lambda ops: ops.set_image_retention(tenant, value)), as_json)


@images_cli.command("delete")
def delete(
    tenant: TenantArg,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete every kept image of a tenant (its tasks' links fall back to the upstream's, expired or not)."""
    if not yes:
        typer.confirm(f"Delete every kept image of tenant {tenant!r}?", abort=True)
    deleted = run_ops(lambda ops: ops.delete_images(tenant))
    if as_json:
        print_json(deleted)
    else:
        typer.echo(f"{deleted.images} images of tenant {deleted.tenant_id} deleted (the store is emptied shortly)")
