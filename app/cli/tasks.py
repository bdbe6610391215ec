"""tasks list | show: the ledger as ops read it (a tenant's failed tasks, what stays unresolved, one task's story).

Each command runs here or, given --url, over a gateway's admin API (app/cli/ops.py), with the same output.
"""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.common import CursorOpt, PageLimitOpt
from app.cli.ops import Ops, run_ops
from app.cli.tenants import JsonOpt, print_fields, print_json, print_next, print_table, when
from app.core.pagination import DEFAULT_PAGE, MAX_PAGE
from app.tasks.ledger import StatusFilter, TaskDetail
from app.webhooks.schemas import DeliveryOut

_STATUS_HELP = "open, waiting, queued, in_progress, completed, failed."
tasks_cli = typer.Typer(
    help="Read the task ledger: list tasks by tenant, status, unknown outcome; show one task.", no_args_is_help=True
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
    page = run_ops(
        lambda ops: ops.tasks(
            limit, cursor, tenant=tenant, status=status, outcome_unknown=True if outcome_unknown else None
        )
    )
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


@tasks_cli.command("show")
def show(
    task_id: Annotated[str, typer.Argument(help="The task's id (task_img_...).")],
    as_json: JsonOpt = False,
) -> None:
    """One task: its ledger row, its history with the upstream, and its webhook deliveries."""

    async def call(ops: Ops) -> tuple[TaskDetail, list[DeliveryOut]]:
        task = await ops.task(task_id)
        deliveries = await ops.deliveries(MAX_PAGE, None, tenant=None, status=None, task_id=task.id)
        return task, deliveries.data

    task, deliveries = run_ops(call)
    if as_json:
        typer.echo(TaskWithDeliveries(**task.model_dump(), deliveries=deliveries).model_dump_json())
        return
    print_fields(
        [
            ("id", task.id),
            ("tenant", task.tenant_id),
            ("end user", task.end_user),
            ("model", task.model),
            ("status", task.status),
            ("images", f"{task.images} of {task.n}"),
            ("error", f"{task.error_code}: {task.error_message}" if task.error_code else None),
            ("created", when(task.created_at)),
            ("updated", when(task.updated_at)),
            ("completed", when(task.completed_at)),
            ("deadline", when(task.deadline_at)),
            ("upstream task", task.upstream_task_id),
            ("upstream key", task.upstream_key_id),
            ("create calls", task.attempts),
            ("upstream 5xx", task.server_errors),
            ("outcome unknown", f"yes (may cost {task.may_cost_images} image(s))" if task.outcome_unknown else "no"),
            ("last look", when(task.refreshed_at)),
            ("next due", when(task.next_check_at)),
            ("last error", task.last_error),
        ]
    )
    typer.echo("")
    if not deliveries:
        typer.echo("webhook deliveries: none")
        return
    print_table(
        ["DELIVERY", "EVENT", "STATUS", "ATTEMPTS", "LAST", "URL"],
        [[d.id, d.event_type, d.status, d.attempts, d.last_status_code or d.last_error, d.url] for d in deliveries],
    )


class TaskWithDeliveries(TaskDetail):
    """`tasks show --json`: the task, and its webhook deliveries."""

    deliveries: list[DeliveryOut]
