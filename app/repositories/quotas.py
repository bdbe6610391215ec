"""SQL for quota counters, quota entries and rate windows. Each change is one conditional statement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, case, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.dialect import insert_for
from app.models import QuotaCounter, QuotaEntry, RateWindow, Task
from app.models.quota import INFLIGHT_PERIOD
from app.models.task import OPEN_STATUSES


async def add_if_fits(session: AsyncSession, tenant_id: str, period: str, amount: int, limit: int | None) -> bool:
    """Add `amount` to a counter (creating it) unless the result would exceed `limit`; True when added.

    One statement: INSERT ... ON CONFLICT DO UPDATE ... WHERE amount + n <= limit RETURNING. Concurrent callers
    serialise on the row, so the check and the write can never be split by another transaction.
    """
    if limit is not None and amount > limit:
        return False
    table = cast(Table, QuotaCounter.__table__)
    stmt = insert_for(session, table).values(tenant_id=tenant_id, period=period, amount=amount)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.tenant_id, table.c.period],
        set_={"amount": table.c.amount + amount},
        where=None if limit is None else (table.c.amount + amount <= limit),
    ).returning(table.c.amount)
    return (await session.execute(stmt)).first() is not None


async def subtract(session: AsyncSession, tenant_id: str, period: str, amount: int) -> None:
    stmt = (
        update(QuotaCounter)
        .where(QuotaCounter.tenant_id == tenant_id, QuotaCounter.period == period)
        .values(amount=QuotaCounter.amount - amount)
    )
    await session.execute(stmt)


async def insert_entry_once(session: AsyncSession, values: dict[str, Any]) -> bool:
    """Insert a ledger entry unless one of the same (task, kind) exists; True when this call inserted it."""
    table = cast(Table, QuotaEntry.__table__)
    stmt = insert_for(session, table).values(**values)
    stmt = stmt.on_conflict_do_nothing(index_elements=[table.c.task_id, table.c.kind]).returning(table.c.id)
    return (await session.execute(stmt)).first() is not None


async def reserve_entry(session: AsyncSession, task_id: str) -> QuotaEntry | None:
    stmt = select(QuotaEntry).where(QuotaEntry.task_id == task_id, QuotaEntry.kind == "reserve")
    return (await session.execute(stmt)).scalar_one_or_none()


async def counters(session: AsyncSession, tenant_id: str, periods: Sequence[str]) -> dict[str, int]:
    stmt = select(QuotaCounter.period, QuotaCounter.amount).where(
        QuotaCounter.tenant_id == tenant_id, QuotaCounter.period.in_(periods)
    )
    return {period: amount for period, amount in (await session.execute(stmt)).all()}


async def all_counters(session: AsyncSession, tenant_id: str | None) -> dict[tuple[str, str], int]:
    stmt = select(QuotaCounter.tenant_id, QuotaCounter.period, QuotaCounter.amount)
    if tenant_id is not None:
        stmt = stmt.where(QuotaCounter.tenant_id == tenant_id)
    return {(tid, period): amount for tid, period, amount in (await session.execute(stmt)).all()}


async def entry_sums(session: AsyncSession, tenant_id: str | None) -> dict[tuple[str, str], int]:
    """What every counter should hold, recomputed from the entries (and, for in-flight, from the entries' kinds)."""
    sums: dict[tuple[str, str], int] = {}
    for column, prefix in ((QuotaEntry.day, "day:"), (QuotaEntry.month, "month:")):
        by_period = select(QuotaEntry.tenant_id, column, func.sum(QuotaEntry.images)).group_by(
            QuotaEntry.tenant_id, column
        )
        if tenant_id is not None:
            by_period = by_period.where(QuotaEntry.tenant_id == tenant_id)
        for tid, period, total in (await session.execute(by_period)).all():
            sums[(tid, prefix + period)] = int(total or 0)
    # A task is in flight from its reserve entry until its settle entry.
    open_reservations = func.sum(case((QuotaEntry.kind == "reserve", 1), else_=-1))
    stmt = select(QuotaEntry.tenant_id, open_reservations).group_by(QuotaEntry.tenant_id)
    if tenant_id is not None:
        stmt = stmt.where(QuotaEntry.tenant_id == tenant_id)
    for tid, total in (await session.execute(stmt)).all():
        sums[(tid, INFLIGHT_PERIOD)] = int(total or 0)
    return sums


async def open_tasks(session: AsyncSession, tenant_id: str) -> int:
    stmt = select(func.count()).select_from(Task).where(Task.tenant_id == tenant_id, Task.status.in_(OPEN_STATUSES))
    return int((await session.execute(stmt)).scalar_one())


async def hit_window(session: AsyncSession, tenant_id: str, kind: str, window_start: int, limit: int) -> int | None:
    """Count one request in its window unless the window is full; the new count, or None when refused."""
    table = cast(Table, RateWindow.__table__)
    stmt = insert_for(session, table).values(tenant_id=tenant_id, kind=kind, window_start=window_start, count=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.tenant_id, table.c.kind, table.c.window_start],
        set_={"count": table.c.count + 1},
        where=table.c.count < limit,
    ).returning(table.c.count)
    row = (await session.execute(stmt)).first()
    return None if row is None else int(row[0])


async def drop_windows_before(session: AsyncSession, tenant_id: str, kind: str, window_start: int) -> None:
    stmt = delete(RateWindow).where(
        RateWindow.tenant_id == tenant_id, RateWindow.kind == kind, RateWindow.window_start < window_start
    )
    await session.execute(stmt)
