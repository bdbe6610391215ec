"""Quota rules: what a task reserves at submit and why a reservation is refused; usage and drift reports.

The reservation and the settle are SQL (app/quotas/repository.py) run inside the statements that admit a task and
end it (app/tasks/admission.py, app/tasks/ending.py): every change to a counter is one conditional statement with the
ledger entry it accounts for, and entries are unique per (task, kind), so a retry, a duplicate poll or a second
replica cannot apply one twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import metrics
from app.core.clock import Clock
from app.core.errors import InsufficientQuota, RateLimited
from app.models import Tenant
from app.models.quota import INFLIGHT_PERIOD
from app.quotas import repository as repo
from app.tenants.service import find as find_tenant
from app.tenants.tokens import EndUser

# A caller refused for its in-flight cap is told to come back after about one typical task's duration.
IN_FLIGHT_RETRY_AFTER_S = 5


def day_key(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%d")


def month_key(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m")


def next_day(now: dt.datetime) -> dt.datetime:
    start = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start + dt.timedelta(days=1)


def next_month(now: dt.datetime) -> dt.datetime:
    start = now.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (start + dt.timedelta(days=32)).replace(day=1)


def reservation(
    tenant: Tenant, task_id: str, n: int, now: dt.datetime, end_user: EndUser | None = None
) -> repo.Reservation:
    """What a task about to be sent reserves: `n` images of the day and of the month, and one slot in flight; for an
    end user's token, `n` images of that end user's day too (inside the tenant's)."""
    day, month = day_key(now), month_key(now)
    return repo.Reservation(
        tenant_id=tenant.id,
        task_id=task_id,
        n=n,
        day=day,
        month=month,
        created_at=now,
        day_limit=tenant.daily_images,
        month_limit=tenant.monthly_images,
        inflight_limit=tenant.max_in_flight,
        end_user=None if end_user is None else end_user.id,
        end_user_day_limit=None if end_user is None else end_user.images_per_day,
    )


def could_fit(r: repo.Reservation) -> set[str]:
    """The counter periods the reservation could fit at all (a counter row that does not exist yet is inserted
    without the limit check: what never fits is refused up front)."""
    return {period for period, (amount, limit) in r.counted().items() if limit is None or amount <= limit}


def refuse_unless_fitted(tenant: Tenant, r: repo.Reservation, fitted: set[str], now: dt.datetime) -> None:
    """Raise the caller's error for the first counter that did not take the reservation (402 for the tenant's day
    or month, then for the end user's day, 429 with Retry-After for the in-flight cap); nothing when all did."""
    if fitted >= r.counted().keys():
        return
    metrics.refused(tenant.id, "quota")
    if r.day_period not in fitted:
        raise InsufficientQuota(
            f"Not enough daily image quota for {r.n} image(s): the limit is {tenant.daily_images} per UTC day "
            "(see GET /v1/usage)."
        )
    if r.month_period not in fitted:
        raise InsufficientQuota(
            f"Not enough monthly image quota for {r.n} image(s): the limit is {tenant.monthly_images} per month "
            "(see GET /v1/usage)."
        )
    if r.user_day_period is not None and r.user_day_period not in fitted:
        raise InsufficientQuota(
            f"Not enough daily image quota for the end user {r.end_user!r} for {r.n} image(s): its limit is "
            f"{r.end_user_day_limit} per UTC day (see GET /v1/usage with its token)."
        )
    reset = int(now.timestamp()) + IN_FLIGHT_RETRY_AFTER_S
    raise RateLimited(
        f"Too many tasks in flight (at most {tenant.max_in_flight}); retry when one finishes.",
        headers={
            "Retry-After": str(IN_FLIGHT_RETRY_AFTER_S),
            "X-RateLimit-Limit": str(tenant.max_in_flight),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset),
        },
    )


@dataclass(frozen=True)
class PeriodUsage:
    period: str
    used: int
    limit: int | None
    resets_at: int

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)


@dataclass(frozen=True)
class Usage:
    tenant_id: str
    day: PeriodUsage
    month: PeriodUsage | None  # None for an end user (counted per day only)
    in_flight: int | None
    max_in_flight: int | None
    end_user: str | None = None


async def usage(session: AsyncSession, tenant: Tenant, now: dt.datetime, end_user: EndUser | None = None) -> Usage:
    """The tenant's usage; with `end_user`, that end user's (its images of the day, against its own limit)."""
    day, month = day_key(now), month_key(now)
    if end_user is not None:
        period = repo.user_day_period(day, end_user.id)
        used = (await repo.counters(session, tenant.id, [period])).get(period, 0)
        limit, resets_at = end_user.images_per_day, int(next_day(now).timestamp())
        return Usage(tenant.id, PeriodUsage(day, used, limit, resets_at), None, None, None, end_user=end_user.id)
    values = await repo.counters(session, tenant.id, [f"day:{day}", f"month:{month}", INFLIGHT_PERIOD])
    return Usage(
        tenant_id=tenant.id,
        day=PeriodUsage(day, values.get(f"day:{day}", 0), tenant.daily_images, int(next_day(now).timestamp())),
        month=PeriodUsage(
            month, values.get(f"month:{month}", 0), tenant.monthly_images, int(next_month(now).timestamp())
        ),
        in_flight=values.get(INFLIGHT_PERIOD, 0),
        max_in_flight=tenant.max_in_flight,
    )


@dataclass(frozen=True)
class Drift:
    tenant_id: str
    counter: str
    stored: int
    expected: int


async def drift(session: AsyncSession, tenant_id: str | None = None) -> list[Drift]:
    """Counters that differ from the sum of their entries (an empty list means the books balance)."""
    expected = await repo.entry_sums(session, tenant_id)
    stored = await repo.all_counters(session, tenant_id)
    return [
        Drift(tid, period, stored.get((tid, period), 0), expected.get((tid, period), 0))
        for tid, period in sorted(set(expected) | set(stored))
        if stored.get((tid, period), 0) != expected.get((tid, period), 0)
    ]


class QuotaService:
    """Usage and drift reports, each in its own read transaction (the reservation and the settle run inside the
    tasks' own statements, next to the ledger rows they account for)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Clock) -> None:
        self._sessions = sessions
        self._clock = clock

    async def usage(self, tenant: Tenant, end_user: EndUser | None = None) -> Usage:
        async with self._sessions() as session:
            return await usage(session, tenant, self._clock(), end_user)

    async def usage_of(self, tenant_ref: str) -> Usage:
        """Usage of a tenant named by id or name (404 when unknown)."""
        async with self._sessions() as session:
            return await usage(session, await find_tenant(session, tenant_ref), self._clock())

    async def daily_usage(self, tenant_ref: str, days: int = 14) -> list[tuple[str, int]]:
        """Images counted on each of the last `days` UTC days (today last), from the tenant's day counters."""
        now = self._clock()
        keys = [day_key(now - dt.timedelta(days=back)) for back in reversed(range(days))]
        async with self._sessions() as session:
            tenant = await find_tenant(session, tenant_ref)
            found = await repo.counters(session, tenant.id, keys)
        return [(key, found.get(key, 0)) for key in keys]

    async def drift(self, tenant_ref: str | None = None) -> list[Drift]:
        """Counters that differ from their entries, for every tenant or one (by id or name; 404 when unknown)."""
        async with self._sessions() as session:
            tenant_id = (await find_tenant(session, tenant_ref)).id if tenant_ref is not None else None
            return await drift(session, tenant_id)
