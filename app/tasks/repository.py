"""SQL for the task ledger. Every tenant-facing query takes tenant_id."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any, cast

from sqlalchemy import Table, TextClause, bindparam, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.core.db import driver
from app.models.task import OPEN_STATUSES, Task, TaskStatus

_TASKS = cast(Table, Task.__table__)


async def get_for_tenant(
    session: AsyncSession, tenant_id: str, task_id: str, end_user: str | None = None
) -> Task | None:
    """A task of the tenant (of that end user only, when one is given)."""
    stmt = select(Task).where(Task.id == task_id, Task.tenant_id == tenant_id)
    if end_user is not None:
        stmt = stmt.where(Task.end_user == end_user)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get(session: AsyncSession, task_id: str) -> Task | None:
    return (await session.execute(select(Task).where(Task.id == task_id))).scalar_one_or_none()


async def claim_refresh(
    session: AsyncSession,
    task_id: str,
    now: dt.datetime,
    interval: dt.timedelta,
    *,
    next_check_at: dt.datetime | None = None,
) -> bool:
    """Take the right to refresh a task from the upstream: at most one claimant per interval, across replicas.
    The reconciler's next look moves to `next_check_at` (a look now makes the scheduled one unnecessary)."""
    stmt = (
        update(Task)
        .where(
            Task.id == task_id,
            Task.status.in_(OPEN_STATUSES),
            Task.upstream_task_id.is_not(None),
            or_(Task.refreshed_at.is_(None), Task.refreshed_at <= now - interval),
        )
        .values(refreshed_at=now, **({"next_check_at": next_check_at} if next_check_at is not None else {}))
    )
    result = await session.execute(stmt)
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def apply_update(session: AsyncSession, task_id: str, values: dict[str, Any]) -> Task | None:
    """Write a status change unless the task is already terminal (a terminal row never changes again).

    The updated row, or None when nothing changed; one round trip either way (UPDATE ... RETURNING).
    """
    row = (await session.execute(_update_open(frozenset(values), returning=True), {**values, "_id": task_id})).first()
    return None if row is None else Task(**row._asdict())


async def apply_update_to(connection: AsyncConnection, task: Task, values: dict[str, Any]) -> bool:
    """`apply_update` for a task already in memory, on a connection in autocommit (the statement is its own
    transaction): nothing read back, `task` updated when the row was. Sent on the driver's connection (the submit's
    second statement: app/core/db/driver.py says why)."""
    if not await _update_open_to(frozenset(values)).rowcount(connection, {**values, "_id": task.id}):
        return False
    for name, value in values.items():
        setattr(task, name, value)
    return True


@functools.lru_cache(maxsize=64)
def _update_open_to(columns: frozenset[str]) -> driver.Statement:
    return driver.Statement(_update_open(columns, returning=False))


@functools.lru_cache(maxsize=64)
def _update_open(columns: frozenset[str], *, returning: bool) -> TextClause:
    """UPDATE of these columns of an open task, built once per set of columns: on the submit and reconcile paths,
    building a Core or ORM statement cost more CPU than its round trip (the compiled form is cached either way)."""
    names = sorted(columns)
    open_statuses = ", ".join(f"'{TaskStatus(status).value}'" for status in sorted(OPEN_STATUSES))
    sql = (
        f"UPDATE tasks SET {', '.join(f'{name} = :{name}' for name in names)} "
        f"WHERE id = :_id AND status IN ({open_statuses})"
    )
    if returning:
        sql += f" RETURNING {', '.join(column.name for column in _TASKS.c)}"
    stmt = text(sql).bindparams(*(bindparam(name, type_=_TASKS.c[name].type) for name in names))
    return stmt.columns(*_TASKS.c) if returning else stmt  # type: ignore[return-value]


async def claim_due(
    session: AsyncSession, now: dt.datetime, lease_until: dt.datetime, owner: str, limit: int
) -> list[Task]:
    """Lease up to `limit` open tasks whose next look is due and that nobody holds: each tenant's most overdue task
    first, then each one's second, and so on (one tenant's burst cannot starve the others' waiting tasks, and a
    claim still fills up when few tenants have due work: a cap per tenant made one claim, a transaction of three
    statements, per five tasks of a lone busy tenant). The leased rows as the lease left them: the claimant works
    from them without reading each again.

    Candidates are locked with FOR UPDATE SKIP LOCKED, so concurrent claimants (every replica runs one) never wait
    for each other nor take the same task.
    """
    due = (
        select(
            Task.id,
            Task.next_check_at,
            func.row_number().over(partition_by=Task.tenant_id, order_by=Task.next_check_at).label("rank"),
        )
        .where(
            Task.next_check_at <= now,
            Task.status.in_(OPEN_STATUSES),
            or_(Task.lease_until.is_(None), Task.lease_until <= now),
        )
        .order_by(Task.next_check_at)
        .limit(limit * 10)
        .subquery()
    )
    fair = select(due.c.id).order_by(due.c.rank, due.c.next_check_at).limit(limit)
    candidates = list((await session.execute(fair)).scalars().all())
    if not candidates:
        return []
    lockable = (
        select(Task.id)
        .where(Task.id.in_(candidates), or_(Task.lease_until.is_(None), Task.lease_until <= now))
        .with_for_update(skip_locked=True)
    )
    locked = list((await session.execute(lockable)).scalars().all())
    if not locked:
        return []
    stmt = (
        update(_TASKS)
        .where(_TASKS.c.id.in_(locked), or_(_TASKS.c.lease_until.is_(None), _TASKS.c.lease_until <= now))
        .values(lease_owner=owner, lease_until=lease_until)
        .returning(*_TASKS.c)
    )
    return [Task(**row._asdict()) for row in await session.execute(stmt)]


async def release_leases(session: AsyncSession, task_ids: list[str], owner: str) -> None:
    """Give back the leases `owner` holds on these tasks (their next look is due at their next_check_at)."""
    stmt = (
        update(Task)
        .where(Task.id.in_(task_ids), Task.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    await session.execute(stmt)


async def update_task(session: AsyncSession, task_id: str, **values: Any) -> None:
    stmt = update(Task).where(Task.id == task_id).values(**values).execution_options(synchronize_session=False)
    await session.execute(stmt)


async def count_waiting(session: AsyncSession) -> int:
    """Tasks waiting for an upstream key to take them (`waiting`)."""
    stmt = select(func.count()).select_from(Task).where(Task.status == TaskStatus.WAITING)
    return int((await session.execute(stmt)).scalar_one())


async def get_by_idempotency_key(session: AsyncSession, tenant_id: str, key: str) -> Task | None:
    stmt = select(Task).where(Task.tenant_id == tenant_id, Task.idempotency_key == key)
    return (await session.execute(stmt)).scalar_one_or_none()


async def release_idempotency_key(session: AsyncSession, task_id: str) -> None:
    """Free an expired Idempotency-Key for reuse (the task keeps everything else)."""
    await update_task(session, task_id, idempotency_key=None)


async def set_upstream_key(session: AsyncSession, task_id: str, upstream_key_id: str) -> None:
    """Pin a task still being submitted to another upstream key (its first one could not take it)."""
    stmt = (
        update(Task)
        .where(Task.id == task_id)
        .values(upstream_key_id=upstream_key_id)
        .execution_options(synchronize_session=False)
    )
    await session.execute(stmt)


async def sent_open_task_ids(session: AsyncSession) -> list[str]:
    """Open tasks the upstream has or may have (created there, being sent, or sent without an answer)."""
    stmt = select(Task.id).where(
        Task.status.in_(OPEN_STATUSES),
        or_(Task.upstream_task_id.is_not(None), Task.status == TaskStatus.SUBMITTING, Task.outcome_unknown.is_(True)),
    )
    return list((await session.execute(stmt)).scalars().all())
