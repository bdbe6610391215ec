"""Ops API over the task ledger (/admin/v1/tasks): find a tenant's failed tasks, and what stays unresolved."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.contract import ErrorEnvelope
from app.deps import AdminDep, KernelDep
from app.tasks.ledger import DEFAULT_PAGE, MAX_PAGE, LedgerPage, StatusFilter, TaskLedger

router = APIRouter(
    prefix="/admin/v1", tags=["admin"], dependencies=[AdminDep], responses={401: {"model": ErrorEnvelope}}
)


@router.get(
    "/tasks",
    response_model=LedgerPage,
    responses={400: {"model": ErrorEnvelope, "description": "Invalid filter, limit or cursor"}},
    summary="Tasks of the ledger, newest first (filter by tenant, status, unknown create outcome)",
)
async def list_tasks(
    kernel: KernelDep,
    tenant_id: Annotated[str | None, Query(max_length=40, pattern=r"^[A-Za-z0-9_-]+$")] = None,
    status: StatusFilter | None = None,
    outcome_unknown: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    cursor: Annotated[str | None, Query(max_length=49, pattern=r"^task_img_[0-9a-f]{1,40}$")] = None,
) -> LedgerPage:
    return await TaskLedger(kernel.sessions).list(
        tenant_id=tenant_id, status=status, outcome_unknown=outcome_unknown, limit=limit, cursor=cursor
    )
