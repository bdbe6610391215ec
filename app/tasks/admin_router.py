"""Ops API over the task ledger (/admin/v1/tasks): find a tenant's failed tasks, and what stays unresolved."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.contract import NO_CONTROL_PATTERN, ErrorEnvelope
from app.core.deps import AdminDep, KernelDep
from app.core.pagination import DEFAULT_PAGE, limit_query
from app.tasks.ledger import TASK_CURSOR, LedgerPage, StatusFilter, TaskDetail, TaskLedger

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


@router.get(
    "/tasks/{task_id}",
    response_model=TaskDetail,
    responses={404: {"model": ErrorEnvelope, "description": "No such task"}},
    summary="One task of the ledger, any tenant's: its row and its history with the upstream",
)
async def get_task(task_id: Annotated[str, Path(max_length=64)], kernel: KernelDep) -> TaskDetail:
    """Its webhook deliveries: GET /admin/v1/webhook-deliveries?task_id=."""
    return await TaskLedger(kernel.sessions).get(task_id)
