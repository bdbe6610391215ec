"""Ops API: the audit log (GET /admin/v1/audit)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from app.audit.deps import AuditServiceDep
from app.audit.schemas import AuditList
from app.audit.service import EVENT_CURSOR
from app.contract import NO_CONTROL_PATTERN, ErrorEnvelope
from app.core.deps import AdminDep
from app.core.pagination import DEFAULT_PAGE, limit_query

router = APIRouter(
    prefix="/admin/v1",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={400: {"model": ErrorEnvelope}, 401: {"model": ErrorEnvelope}},
)


@router.get("/audit", response_model=AuditList, summary="The audit log of admin actions, newest first")
async def list_audit(
    audit: AuditServiceDep,
    limit: Annotated[int, limit_query()] = DEFAULT_PAGE,
    cursor: Annotated[str | None, EVENT_CURSOR.query()] = None,
    target_id: Annotated[
        str | None, Query(max_length=64, pattern=NO_CONTROL_PATTERN, description="Only events on this target.")
    ] = None,
    action: Annotated[
        str | None,
        Query(
            max_length=64,
            pattern=NO_CONTROL_PATTERN,
            description='Only this action, e.g. "key.revoke", or one kind of actions, e.g. "key.*".',
        ),
    ] = None,
    actor: Annotated[
        str | None,
        Query(max_length=64, pattern=NO_CONTROL_PATTERN, description='Only this actor, e.g. "cli" or "console".'),
    ] = None,
    outcome: Annotated[Literal["ok", "refused"] | None, Query(description="Only this outcome.")] = None,
) -> AuditList:
    """Every admin action made through this API, the console or the command line (who, what, when, on what, the
    outcome)."""
    return await audit.list(
        limit=limit, cursor=cursor, target_id=target_id, action=action, actor=actor, outcome=outcome
    )
