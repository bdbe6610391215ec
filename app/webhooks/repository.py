"""SQL for webhook deliveries: enqueue, claim what is due under a lease, record an attempt, page, replay."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.webhook import WebhookDelivery as D

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


async def insert(session: AsyncSession, rows: Sequence[D]) -> None:
    session.add_all(rows)
    await session.flush()


def tenant_webhook_url_sql(tenant_id: str) -> str:
    """A scalar subquery of the webhook URL of the tenant that `tenant_id` gives (a column or a parameter of the
    statement that embeds it): a task's end reads it along (app/tasks/ending.py), so the end's events are enqueued
    without a statement of their own. This module's public fragment."""
    return f"(SELECT webhook_url FROM tenants t WHERE t.id = {tenant_id})"


def _due(now: dt.datetime) -> ColumnElement[bool]:
    return (D.status == PENDING) & (D.next_attempt_at <= now) & or_(D.lease_until.is_(None), D.lease_until <= now)


async def any_due(session: AsyncSession, now: dt.datetime) -> bool:
    """Whether any delivery is due (one indexed read)."""
    return (await session.execute(select(D.id).where(_due(now)).limit(1))).first() is not None


async def claim_due(session: AsyncSession, now: dt.datetime, lease_until: dt.datetime, limit: int) -> list[D]:
    """Take up to `limit` due pending deliveries whose lease (if any) ran out, leased until `lease_until`.

    One statement: the candidates are locked with FOR UPDATE SKIP LOCKED (replicas claiming at once take different
    rows, without waiting on each other).
    """
    due = _due(now)
    candidates = select(D.id).where(due).order_by(D.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
    stmt = (
        update(D)
        .where(D.id.in_(candidates.scalar_subquery()), due)
        .values(lease_until=lease_until)
        .returning(D.id)
        .execution_options(synchronize_session=False)
    )
    ids = list((await session.execute(stmt)).scalars().all())
    if not ids:
        return []
    rows = (await session.execute(select(D).where(D.id.in_(ids)).order_by(D.next_attempt_at))).scalars().all()
    return list(rows)


async def record_attempt(
    session: AsyncSession, delivery_id: str, lease_until: dt.datetime, values: dict[str, Any]
) -> bool:
    """Write an attempt's outcome if the claim still holds (not replayed or re-claimed meanwhile)."""
    stmt = (
        update(D)
        .where(D.id == delivery_id, D.status == PENDING, D.lease_until == lease_until)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(stmt)
    return bool(getattr(result, "rowcount", 0))


async def get(session: AsyncSession, delivery_id: str, *, for_update: bool = False) -> D | None:
    stmt = select(D).where(D.id == delivery_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def page(
    session: AsyncSession,
    *,
    limit: int,
    before_id: str | None,
    tenant_id: str | None,
    status: str | None,
    task_id: str | None,
) -> Sequence[D]:
    """Up to `limit` deliveries, newest first (ids are time-sortable), older than `before_id` when given."""
    stmt = select(D).order_by(D.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(D.id < before_id)
    if tenant_id is not None:
        stmt = stmt.where(D.tenant_id == tenant_id)
    if status is not None:
        stmt = stmt.where(D.status == status)
    if task_id is not None:
        stmt = stmt.where(D.task_id == task_id)
    return (await session.execute(stmt)).scalars().all()


def _unattempted_of(task_id: str) -> ColumnElement[bool]:
    return (D.task_id == task_id) & (D.status == PENDING) & (D.attempts == 0)


async def hold_task(session: AsyncSession, task_id: str, until: dt.datetime) -> None:
    """A task's deliveries not attempted yet wait until `until`."""
    stmt = (
        update(D)
        .where(_unattempted_of(task_id))
        .values(next_attempt_at=until)
        .execution_options(synchronize_session=False)
    )
    await session.execute(stmt)


async def unattempted_of_task(session: AsyncSession, task_id: str, now: dt.datetime) -> list[D]:
    """A task's deliveries not attempted yet nor being attempted, locked (the deliverer's claim skips them)."""
    free = or_(D.lease_until.is_(None), D.lease_until <= now)
    stmt = select(D).where(_unattempted_of(task_id), free).with_for_update(skip_locked=True)
    return list((await session.execute(stmt)).scalars().all())
