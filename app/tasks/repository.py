"""SQL for the task ledger. Every tenant-facing query takes tenant_id."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.contract import OPEN_STATUSES, TaskStatus
from app.models.task import Task


async def insert(session: AsyncSession, task: Task) -> None:
    session.add(task)
    await session.flush()


async def get_for_tenant(session: AsyncSession, tenant_id: str, task_id: str) -> Task | None:
    stmt = select(Task).where(Task.id == task_id, Task.tenant_id == tenant_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get(session: AsyncSession, task_id: str) -> Task | None:
    return (await session.execute(select(Task).where(Task.id == task_id))).scalar_one_or_none()


async def claim_refresh(session: AsyncSession, task_id: str, now: dt.datetime, interval: dt.timedelta) -> bool:
    """Take the right to refresh a task from the upstream: at most one claimant per interval, across replicas."""
    stmt = (
        update(Task)
        .where(
            Task.id == task_id,
            Task.status.in_(OPEN_STATUSES),
            Task.upstream_task_id.is_not(None),
            or_(Task.refreshed_at.is_(None), Task.refreshed_at <= now - interval),
        )
        .values(refreshed_at=now)
    )
    result = await session.execute(stmt)
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def apply_update(session: AsyncSession, task_id: str, values: dict[str, Any]) -> Task | None:
    """Write a status change unless the task is already terminal (a terminal row never changes again).

    The updated row, or None when nothing changed; one round trip either way (UPDATE ... RETURNING).
    """
    stmt = (
        update(Task)
        .where(Task.id == task_id, Task.status.in_(OPEN_STATUSES))
        .values(**values)
        .returning(Task)
        .execution_options(synchronize_session=False)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def stale_open_task_ids(session: AsyncSession, refreshed_before: dt.datetime, limit: int) -> list[str]:
    """Open tasks the upstream was last asked about before `refreshed_before`, least recently asked first."""
    stmt = (
        select(Task.id)
        .where(
            Task.status.in_(OPEN_STATUSES),
            Task.upstream_task_id.is_not(None),
            or_(Task.refreshed_at.is_(None), Task.refreshed_at < refreshed_before),
        )
        .order_by(Task.refreshed_at.is_not(None), Task.refreshed_at)
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars().all())


async def interrupted_submit_ids(session: AsyncSession, created_before: dt.datetime, limit: int) -> list[str]:
    """Tasks still waiting for the upstream's answer to their create call long after any call could last."""
    stmt = (
        select(Task.id)
        .where(Task.status == TaskStatus.SUBMITTING, Task.upstream_task_id.is_(None), Task.created_at < created_before)
        .order_by(Task.created_at)
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars().all())


async def set_upstream_key(session: AsyncSession, task_id: str, upstream_key_id: str) -> None:
    """Pin a task still being submitted to another upstream key (its first one could not take it)."""
    stmt = (
        update(Task)
        .where(Task.id == task_id)
        .values(upstream_key_id=upstream_key_id)
        .execution_options(synchronize_session=False)
    )
    await session.execute(stmt)
