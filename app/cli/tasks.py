"""tasks list: the ledger as ops read it (a tenant's failed tasks, what stays unresolved), one service call."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.common import CursorOpt, PageLimitOpt, run_with_kernel, settings_with
from app.cli.tenants import JsonOpt, print_json, print_next, print_table, when
from app.core.pagination import DEFAULT_PAGE
from app.core.runtime import Kernel
from app.tasks.ledger import LedgerPage, StatusFilter, TaskLedger

_STATUS_HELP = "open, waiting, queued, in_progress, completed, failed."
tasks_cli = typer.Typer(
    help="Read the task ledger: list tasks by tenant, status, unknown outcome.", no_args_is_help=True
)


@tasks_cli.command("list")
def list_tasks(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's (id or name).")] = None,
    status: Annotated[StatusFilter | None, typer.Option("--status", help=_STATUS_HELP)] = None,
    outcome_unknown: Annotated[
        bool, typer.Option("--outcome-unknown", help="Only tasks whose create call was sent and never answered.")
    ] = False,
    limit: PageLimitOpt = DEFAULT_PAGE,
    cursor: CursorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tasks, newest first; the unresolved ones (unknown create outcome) and what they may cost are counted."""

    async def call(kernel: Kernel) -> LedgerPage:
        return await TaskLedger(kernel.sessions).list(
            tenant_id=tenant,
            status=status,
            outcome_unknown=True if outcome_unknown else None,
            limit=limit,
            cursor=cursor,
        )

    page = run_with_kernel(settings_with(), call)
    if as_json:
        print_json(page)
        return
    print_table(
        ["ID", "TENANT", "STATUS", "N", "UNKNOWN", "ERROR", "CREATED"],
        [
            (t.id, t.tenant_id, t.status, t.n, "yes" if t.outcome_unknown else "", t.error_code, when(t.created_at))
            for t in page.data
        ],
    )
    typer.echo(
        f"unresolved (unknown create outcome): {page.unresolved} task(s), up to {page.unresolved_images} image(s)"
    )
    print_next(page.next_cursor)
