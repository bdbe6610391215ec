"""audit: the audit log of admin actions (who, what, when, on what, the outcome), newest first, with filters.

Runs here or, given --url, over a gateway's admin API (app/cli/ops.py), with the same output.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import typer

from app.cli.common import CursorOpt, PageLimitOpt
from app.cli.ops import run_ops
from app.cli.tenants import JsonOpt, print_json, print_next, print_table, when
from app.core.pagination import DEFAULT_PAGE

Outcome = Literal["ok", "refused"]


def audit(
    target: Annotated[str | None, typer.Option("--target", help="Only events on this target (its id).")] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="Only this action (e.g. key.revoke), or a kind (e.g. 'key.*').")
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Only this actor: admin-token, console, cli, system.")
    ] = None,
    outcome: Annotated[Outcome | None, typer.Option("--outcome", help="ok or refused.")] = None,
    limit: PageLimitOpt = DEFAULT_PAGE,
    cursor: CursorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The audit log of admin actions (API, console and command line), newest first."""
    page = run_ops(lambda ops: ops.audit(limit, cursor, target_id=target, action=action, actor=actor, outcome=outcome))
    if as_json:
        print_json(page)
        return
    print_table(
        ["ID", "WHEN", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DETAIL"],
        [
            [
                e.id,
                when(e.created_at),
                e.actor,
                e.action,
                f"{e.target_type}:{e.target_id}" if e.target_id else e.target_type,
                e.outcome,
                json.dumps(e.detail, separators=(",", ":")) if e.detail else "",
            ]
            for e in page.data
        ],
    )
    print_next(page.next_cursor)
