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

from sqlalchemy import BigInteger, BindParameter, Integer, String, bindparam, case, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db.base import UTCDateTime
from app.models import QuotaCounter, QuotaEntry, RateWindow
from app.models.quota import INFLIGHT_PERIOD

_RESERVE_ENTRY = """
    INSERT INTO quota_entries (tenant_id, task_id, kind, images, day, month, created_at, end_user)
    VALUES (:tenant_id, :task_id, 'reserve', :n, :day, :month, :created_at, :end_user)
    ON CONFLICT (task_id, kind) DO NOTHING
"""


def _reserve_counters(end_user: bool) -> str:
    """All the counters in one upsert: the tenant's three and, for a task of an end user's token, that end user's
    day first. A row whose new amount would pass its limit (NULL = unlimited) is left alone and missing from
    RETURNING. Rows lock in VALUES order (the end user's day, then the tenant's day, month, in flight), the order
    `settle_ctes` uses too."""
    own = "(:tenant_id, :user_day_period, :n), " if end_user else ""
    own_limit = "WHEN :user_day_period THEN :user_day_limit " if end_user else ""
    return f"""
    INSERT INTO quota_counters AS c (tenant_id, period, amount)
    VALUES {own}(:tenant_id, :day_period, :n), (:tenant_id, :month_period, :n), (:tenant_id, :inflight_period, 1)
    ON CONFLICT (tenant_id, period) DO UPDATE SET amount = c.amount + excluded.amount
    WHERE c.amount + excluded.amount <= COALESCE(
        CASE excluded.period {own_limit}WHEN :day_period THEN :day_limit WHEN :month_period THEN :month_limit
                             ELSE :inflight_limit END,
        c.amount + excluded.amount)
    RETURNING period
"""


RESERVED_COUNTERS = 3  # the rows of `counters` when every counter took the reservation (an end user's day: one more)


def reserved_counters(*, end_user: bool = False) -> int:
    """The rows of `counters` when every counter took the reservation."""
    return RESERVED_COUNTERS + (1 if end_user else 0)


def reserve_ctes(*, end_user: bool = False) -> str:
    """The reservation as two data-modifying CTEs, for the statement that admits a task (app/tasks/admission.py):
    `counters`, one row (`period`) per counter that took the reservation (`reserved_counters()` when all did; a
    counter the reservation would take past its limit is left alone and missing), then `entry`, the task's reserve
    entry (once per task). `end_user`: the reservation of an end user's token, whose day is counted too. The
    statement must undo everything when a counter is missing. Parameters: `Reservation.params()`, typed by
    `reserve_params()`."""
    return f"counters AS ({_reserve_counters(end_user)}),\nentry AS ({_RESERVE_ENTRY})"


def reserve_params(*, end_user: bool = False) -> tuple[BindParameter[Any], ...]:
    """The typed bind parameters of `reserve_ctes` (those whose type SQLAlchemy cannot guess from the text)."""
    own = (bindparam("user_day_limit", type_=Integer),) if end_user else ()
    return (
        bindparam("n", type_=Integer),
        bindparam("day_limit", type_=Integer),
        bindparam("month_limit", type_=Integer),
        bindparam("inflight_limit", type_=Integer),
        bindparam("created_at", type_=UTCDateTime()),
        bindparam("end_user", type_=String),
        *own,
    )


def user_day_period(day: str, end_user: str) -> str:
    """The counter of one end user's images of a UTC day (inside its tenant's)."""
    return f"user:{day}:{end_user}"


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
    end_user: str | None = None  # a token's end user: its day is counted too
    end_user_day_limit: int | None = None

    @property
    def day_period(self) -> str:
        return f"day:{self.day}"

    @property
    def month_period(self) -> str:
        return f"month:{self.month}"

    @property
    def user_day_period(self) -> str | None:
        return None if self.end_user is None else user_day_period(self.day, self.end_user)

    def counted(self) -> dict[str, tuple[int, int | None]]:
        """Every counter the reservation adds to: its period -> (amount, limit), in the order rows are locked."""
        counted: dict[str, tuple[int, int | None]] = {}
        if self.user_day_period is not None:
            counted[self.user_day_period] = (self.n, self.end_user_day_limit)
        counted[self.day_period] = (self.n, self.day_limit)
        counted[self.month_period] = (self.n, self.month_limit)
        counted[INFLIGHT_PERIOD] = (1, self.inflight_limit)
        return counted

    def params(self) -> dict[str, Any]:
        """The parameters of `reserve_ctes`."""
        own = {} if self.end_user is None else {"user_day_period": self.user_day_period}
        return {
            **own,
            "end_user": self.end_user,
            "user_day_limit": self.end_user_day_limit,
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
    (tenant_id, images, day, month, end_user, and `charged`: the images to charge): `settled` (the settle entry,
    once per task) and `locked` (the counter rows it changes: an end user's day too), then `counted`, the counters'
    update. Counter rows are locked in the reservation's order (the end user's day, then the tenant's day, month, in
    flight) whatever the plan, so a settle and a reservation of the same tenant cannot deadlock. `:task_id` and
    `:now` are bound by the statement (app/tasks/ending.py)."""
    return f"""
    {reserved}, settled AS (
        INSERT INTO quota_entries (tenant_id, task_id, kind, images, day, month, created_at, end_user)
        SELECT tenant_id, :task_id, 'settle', -(images - LEAST(GREATEST(charged, 0), images)), day, month, :now,
            end_user
        FROM reserved
        ON CONFLICT (task_id, kind) DO NOTHING
        RETURNING tenant_id, -images AS refund, day, month, end_user
    ), locked AS (
        SELECT c.tenant_id, c.period, CASE WHEN c.period = '{INFLIGHT_PERIOD}' THEN 1 ELSE s.refund END AS amount
        FROM quota_counters c JOIN settled s ON c.tenant_id = s.tenant_id
            AND (c.period = '{INFLIGHT_PERIOD}'
                 OR (s.refund <> 0 AND (c.period IN ('day:' || s.day, 'month:' || s.month)
                                        OR c.period = 'user:' || s.day || ':' || s.end_user)))
        ORDER BY CASE WHEN c.period = '{INFLIGHT_PERIOD}' THEN 3 WHEN c.period LIKE 'month:%' THEN 2
                      WHEN c.period LIKE 'day:%' THEN 1 ELSE 0 END
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
    # End users' days (tokens' tasks).
    by_user = (
        select(QuotaEntry.tenant_id, QuotaEntry.end_user, QuotaEntry.day, func.sum(QuotaEntry.images))
        .where(QuotaEntry.end_user.is_not(None))
        .group_by(QuotaEntry.tenant_id, QuotaEntry.end_user, QuotaEntry.day)
    )
    if tenant_id is not None:
        by_user = by_user.where(QuotaEntry.tenant_id == tenant_id)
    for tid, end_user, day, total in (await session.execute(by_user)).all():
        sums[(tid, user_day_period(day, str(end_user)))] = int(total or 0)
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


_RELEASE_WINDOW = text("""
    UPDATE rate_windows SET count = count - 1
    WHERE tenant_id = :tenant_id AND kind = :kind AND window_start = :window_start AND count > 0
""").bindparams(bindparam("window_start", type_=BigInteger))


async def release_window(session: AsyncSession, tenant_id: str, kind: str, window_start: int) -> None:
    """Uncount one request of a window (never below zero)."""
    await session.execute(_RELEASE_WINDOW, {"tenant_id": tenant_id, "kind": kind, "window_start": window_start})


async def drop_windows_before(session: AsyncSession, tenant_id: str, kind: str, window_start: int) -> None:
    stmt = delete(RateWindow).where(
        RateWindow.tenant_id == tenant_id, RateWindow.kind == kind, RateWindow.window_start < window_start
    )
    await session.execute(stmt)
