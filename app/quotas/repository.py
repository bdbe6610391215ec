"""SQL for quota counters, quota entries and rate windows. Each change is one conditional statement.

The reservation (`reserve_ctes`) and the settle (`settle_ctes`) are parts of the statements that admit a task and
end it (app/tasks/admission.py, app/tasks/ending.py): the one place each rule is written, and the one path that runs
it. They are this module's public fragments: the tasks feature composes them, and reads nothing else of this module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, BindParameter, Integer, bindparam, case, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db.base import UTCDateTime
from app.models import QuotaCounter, QuotaEntry, RateWindow
from app.models.quota import INFLIGHT_PERIOD

_RESERVE_ENTRY = """
    INSERT INTO quota_entries (tenant_id, task_id, kind, images, day, month, created_at)
    VALUES (:tenant_id, :task_id, 'reserve', :n, :day, :month, :created_at)
    ON CONFLICT (task_id, kind) DO NOTHING
"""
# All three counters in one upsert; a row whose new amount would pass its limit (NULL = unlimited) is left alone
# and missing from RETURNING. Rows lock in VALUES order (day, month, in flight), the order `settle_ctes` uses too.
_RESERVE_COUNTERS = """
    INSERT INTO quota_counters AS c (tenant_id, period, amount)
    VALUES (:tenant_id, :day_period, :n), (:tenant_id, :month_period, :n), (:tenant_id, :inflight_period, 1)
    ON CONFLICT (tenant_id, period) DO UPDATE SET amount = c.amount + excluded.amount
    WHERE c.amount + excluded.amount <= COALESCE(
        CASE excluded.period WHEN :day_period THEN :day_limit WHEN :month_period THEN :month_limit
                             ELSE :inflight_limit END,
        c.amount + excluded.amount)
    RETURNING period
"""
RESERVED_COUNTERS = 3  # the rows of `counters` when every counter took the reservation


def reserve_ctes() -> str:
    """The reservation as two data-modifying CTEs, for the statement that admits a task (app/tasks/admission.py):
    `counters`, one row (`period`) per counter that took the reservation (RESERVED_COUNTERS when all did; a counter
    the reservation would take past its limit is left alone and missing), then `entry`, the task's reserve entry
    (once per task). The statement must undo everything when a counter is missing. Parameters: `Reservation.params()`,
    typed by `reserve_params()`."""
    return f"counters AS ({_RESERVE_COUNTERS}),\nentry AS ({_RESERVE_ENTRY})"


def reserve_params() -> tuple[BindParameter[Any], ...]:
    """The typed bind parameters of `reserve_ctes` (those whose type SQLAlchemy cannot guess from the text)."""
    return (
        bindparam("n", type_=Integer),
        bindparam("day_limit", type_=Integer),
        bindparam("month_limit", type_=Integer),
        bindparam("inflight_limit", type_=Integer),
        bindparam("created_at", type_=UTCDateTime()),
    )


@dataclass(frozen=True, slots=True)
class Reservation:
    tenant_id: str
    task_id: str
    n: int
    day: str
    month: str
    created_at: dt.datetime
    day_limit: int | None
    month_limit: int | None
    inflight_limit: int | None

    @property
    def day_period(self) -> str:
        return f"day:{self.day}"

    @property
    def month_period(self) -> str:
        return f"month:{self.month}"

    def params(self) -> dict[str, Any]:
        """The parameters of `reserve_ctes`."""
        return {
            "tenant_id": self.tenant_id,
            "task_id": self.task_id,
            "n": self.n,
            "day": self.day,
            "month": self.month,
            "created_at": self.created_at,
            "day_period": self.day_period,
            "month_period": self.month_period,
            "inflight_period": INFLIGHT_PERIOD,
            "day_limit": self.day_limit,
            "month_limit": self.month_limit,
            "inflight_limit": self.inflight_limit,
        }


def settle_ctes(reserved: str) -> str:
    """The CTEs that settle a reservation, for a statement whose CTE `reserved` gives the reserve entry to settle
    (tenant_id, images, day, month, and `charged`: the images to charge): `settled` (the settle entry, once per
    task) and `locked` (the counter rows it changes), then `counted`, the counters' update. Counter rows are locked in
    the reservation's order (day, month, in flight) whatever the plan, so a settle and a reservation of the same
    tenant cannot deadlock. `:task_id` and `:now` are bound by the statement (app/tasks/ending.py)."""
    return f"""
    {reserved}, settled AS (
        INSERT INTO quota_entries (tenant_id, task_id, kind, images, day, month, created_at)
        SELECT tenant_id, :task_id, 'settle', -(images - LEAST(GREATEST(charged, 0), images)), day, month, :now
        FROM reserved
        ON CONFLICT (task_id, kind) DO NOTHING
        RETURNING tenant_id, -images AS refund, day, month
    ), locked AS (
        SELECT c.tenant_id, c.period, CASE WHEN c.period = '{INFLIGHT_PERIOD}' THEN 1 ELSE s.refund END AS amount
        FROM quota_counters c JOIN settled s ON c.tenant_id = s.tenant_id
            AND (c.period = '{INFLIGHT_PERIOD}'
                 OR (s.refund <> 0 AND c.period IN ('day:' || s.day, 'month:' || s.month)))
        ORDER BY CASE WHEN c.period = '{INFLIGHT_PERIOD}' THEN 2 WHEN c.period LIKE 'month:%' THEN 1 ELSE 0 END
        FOR UPDATE OF c
    ), counted AS (
        UPDATE quota_counters q SET amount = q.amount - l.amount FROM locked l
        WHERE q.tenant_id = l.tenant_id AND q.period = l.period
        RETURNING 1
    )"""


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


# Built once, like the reserve statement: on the request path, building it would cost as much as running it.
_HIT_WINDOW = text("""
    INSERT INTO rate_windows AS w (tenant_id, kind, window_start, count)
    VALUES (:tenant_id, :kind, :window_start, 1)
    ON CONFLICT (tenant_id, kind, window_start) DO UPDATE SET count = w.count + 1
    WHERE w.count < :limit
    RETURNING count
""").bindparams(bindparam("window_start", type_=BigInteger), bindparam("limit", type_=Integer))


async def hit_window(session: AsyncSession, tenant_id: str, kind: str, window_start: int, limit: int) -> int | None:
    """Count one request in its window unless the window is full; the new count, or None when refused."""
    params = {"tenant_id": tenant_id, "kind": kind, "window_start": window_start, "limit": limit}
    row = (await session.execute(_HIT_WINDOW, params)).first()
    return None if row is None else int(row[0])


async def drop_windows_before(session: AsyncSession, tenant_id: str, kind: str, window_start: int) -> None:
    stmt = delete(RateWindow).where(
        RateWindow.tenant_id == tenant_id, RateWindow.kind == kind, RateWindow.window_start < window_start
    )
    await session.execute(stmt)
