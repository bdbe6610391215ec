"""Ops API over the task ledger (/admin/v1/tasks): find a tenant's failed tasks, and what stays unresolved."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.contract import NO_CONTROL_PATTERN, ErrorEnvelope
from app.core.deps import AdminDep, KernelDep
from app.core.pagination import DEFAULT_PAGE, limit_query
from app.tasks.ledger import TASK_CURSOR, LedgerPage, StatusFilter, TaskLedger

router = APIRouter(
    prefix="/admin/v1", tags=["admin"], dependencies=[AdminDep], responses={401: {"model": ErrorEnvelope}}
)


@router.get(
    "/tasks",
    response_model=LedgerPage,
    responses={
        400: {"model": ErrorEnvelope, "description": "Invalid filter, limit or cursor"},
        404: {"model": ErrorEnvelope, "description": "No such tenant"},
    },
    summary="Tasks of the ledger, newest first (filter by tenant, status, unknown create outcome)",
)
async def list_tasks(
    kernel: KernelDep,
    tenant_id: Annotated[
        str | None, Query(max_length=200, pattern=NO_CONTROL_PATTERN, description="Only this tenant's (id or name).")
    ] = None,
    status: StatusFilter | None = None,
    outcome_unknown: bool | None = None,
    limit: Annotated[int, limit_query()] = DEFAULT_PAGE,
    cursor: Annotated[str | None, TASK_CURSOR.query()] = None,
) -> LedgerPage:
    return await TaskLedger(kernel.sessions).list(
        tenant_id=tenant_id, status=status, outcome_unknown=outcome_unknown, limit=limit, cursor=cursor
    )
