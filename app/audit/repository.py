"""SQL for the audit log."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuditEvent


async def insert(session: AsyncSession, event: AuditEvent) -> None:
    session.add(event)
    await session.flush()


async def page(
    session: AsyncSession,
    *,
    limit: int,
    before_id: int | None,
    target_id: str | None,
    action: str | None,
    actor: str | None = None,
    outcome: str | None = None,
) -> Sequence[AuditEvent]:
    """Up to `limit` events, newest first (by id), older than `before_id` when given, filtered when asked (`action`
    ending in `.*`: every action of that kind, e.g. `key.*`)."""
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(AuditEvent.id < before_id)
    if target_id is not None:
        stmt = stmt.where(AuditEvent.target_id == target_id)
    if action is not None and action.endswith(".*"):
        stmt = stmt.where(AuditEvent.action.startswith(action[:-1], autoescape=True))
    elif action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    if actor is not None:
        stmt = stmt.where(AuditEvent.actor == actor)
    if outcome is not None:
        stmt = stmt.where(AuditEvent.outcome == outcome)
    return (await session.execute(stmt)).scalars().all()
