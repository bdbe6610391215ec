"""SQL of kept results: enqueue at a task's end, claims with leases (as app/tasks/repository.py claims tasks),
publish, failures, retention, usage."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import ARRAY, Integer, Table, Text, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db.base import UTCDateTime
from app.models import KeptImage, KeptState, Task, Tenant

_KEPT = cast(Table, KeptImage.__table__)
_LIVE = (KeptState.PENDING, KeptState.KEPT)  # rows whose retention still has to end

# One statement in the transaction that ends the task: a row per image, unless the tenant keeps nothing (0 days).
_ENQUEUE = text(
    """
    INSERT INTO kept_images (task_id, index, tenant_id, upstream_url, state, attempts, next_try_at, give_up_at,
        completed_at, keep_until, created_at, updated_at)
    SELECT :task_id, CAST(u.ord AS integer) - 1, t.id, u.url, 'pending', 0, :now, :give_up_at, :completed_at,
        :completed_at + make_interval(days => coalesce(t.result_retention_days, :default_days)), :now, :now
    FROM tenants t, unnest(:urls) WITH ORDINALITY AS u(url, ord)
    WHERE t.id = :tenant_id AND coalesce(t.result_retention_days, :default_days) > 0
    ON CONFLICT DO NOTHING
    """
).bindparams(
    bindparam("urls", type_=ARRAY(Text)),
    bindparam("default_days", type_=Integer),
    bindparam("now", type_=UTCDateTime()),
    bindparam("give_up_at", type_=UTCDateTime()),
    bindparam("completed_at", type_=UTCDateTime()),
)


async def enqueue(
    session: AsyncSession,
    *,
    task_id: str,
    tenant_id: str,
    urls: list[str],
    completed_at: dt.datetime,
    give_up_at: dt.datetime,
    default_days: int,
    now: dt.datetime,
) -> int:
    """A pending copy per image of a task that just completed; the number enqueued."""
    result = await session.execute(
        _ENQUEUE,
        {
            "task_id": task_id,
            "tenant_id": tenant_id,
            "urls": urls,
            "completed_at": completed_at,
            "give_up_at": give_up_at,
            "default_days": default_days,
            "now": now,
        },
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _claim(where: Any, order: Any, now: dt.datetime, lease_until: dt.datetime, owner: str, limit: int) -> Any:
    free = (_KEPT.c.lease_until.is_(None)) | (_KEPT.c.lease_until <= now)
    due = (
        select(_KEPT.c.task_id, _KEPT.c.index)
        .where(where, free)
        .order_by(order)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    return (
        update(_KEPT)
        .where(_KEPT.c.task_id == due.c.task_id, _KEPT.c.index == due.c.index)
        .values(lease_owner=owner, lease_until=lease_until)
        .returning(*_KEPT.c)
    )


async def claim_copies(
    session: AsyncSession, now: dt.datetime, lease_until: dt.datetime, owner: str, limit: int
) -> list[KeptImage]:
    """Lease up to `limit` pending copies whose next attempt is due (FOR UPDATE SKIP LOCKED: replicas share them)."""
    where = (_KEPT.c.state == KeptState.PENDING) & (_KEPT.c.next_try_at <= now)
    stmt = _claim(where, _KEPT.c.next_try_at, now, lease_until, owner, limit)
    return [KeptImage(**row._asdict()) for row in await session.execute(stmt)]


async def claim_expired(
    session: AsyncSession, now: dt.datetime, lease_until: dt.datetime, owner: str, limit: int
) -> list[KeptImage]:
    """Lease up to `limit` images whose retention has ended (kept, or still pending: never to be copied now)."""
    where = _KEPT.c.state.in_(_LIVE) & (_KEPT.c.keep_until <= now)
    stmt = _claim(where, _KEPT.c.keep_until, now, lease_until, owner, limit)
    return [KeptImage(**row._asdict()) for row in await session.execute(stmt)]


async def settle(session: AsyncSession, image: KeptImage, owner: str, values: dict[str, Any]) -> tuple[bool, bool]:
    """Write what became of a leased copy (published, failed, lost), its lease given back: (written, whether the
    task's copies are now all settled). The task's rows are locked in index order first, so two copies of one task
    settling at once take turns, and exactly one of them sees the last pending one go."""
    rows = (
        select(_KEPT.c.index, _KEPT.c.state)
        .where(_KEPT.c.task_id == image.task_id)
        .order_by(_KEPT.c.index)
        .with_for_update()
    )
    states = {index: state for index, state in (await session.execute(rows)).all()}
    stmt = (
        update(_KEPT)
        .where(
            _KEPT.c.task_id == image.task_id,
            _KEPT.c.index == image.index,
            _KEPT.c.lease_owner == owner,
            _KEPT.c.state == KeptState.PENDING,
        )
        .values(**values, lease_owner=None, lease_until=None)
    )
    written = bool((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]
    if written:
        states[image.index] = values.get("state", KeptState.PENDING)
    was_open = image.state == KeptState.PENDING
    settled = written and was_open and all(state != KeptState.PENDING for state in states.values())
    return written, settled


async def mark_deleted(session: AsyncSession, image: KeptImage, owner: str, now: dt.datetime) -> bool:
    """The image is gone from the store: deleted, its lease given back."""
    stmt = (
        update(_KEPT)
        .where(_KEPT.c.task_id == image.task_id, _KEPT.c.index == image.index, _KEPT.c.lease_owner == owner)
        .values(
            state=KeptState.DELETED,
            keep_until=None,
            next_try_at=None,
            deleted_at=now,
            updated_at=now,
            lease_owner=None,
            lease_until=None,
        )
    )
    return bool((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def renew(session: AsyncSession, image: KeptImage, owner: str, lease_until: dt.datetime) -> None:
    """Extend the lease `owner` holds on an image (a long copy goes on)."""
    stmt = (
        update(_KEPT)
        .where(_KEPT.c.task_id == image.task_id, _KEPT.c.index == image.index, _KEPT.c.lease_owner == owner)
        .values(lease_until=lease_until)
    )
    await session.execute(stmt)


async def release(session: AsyncSession, image: KeptImage, owner: str) -> None:
    stmt = (
        update(_KEPT)
        .where(_KEPT.c.task_id == image.task_id, _KEPT.c.index == image.index, _KEPT.c.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
    )
    await session.execute(stmt)


async def of_task(session: AsyncSession, task_id: str) -> list[KeptImage]:
    stmt = select(KeptImage).where(KeptImage.task_id == task_id).order_by(KeptImage.index)
    return list((await session.execute(stmt)).scalars().all())


async def one(session: AsyncSession, task_id: str, index: int) -> KeptImage | None:
    return await session.get(KeptImage, (task_id, index))


async def end_user_of(session: AsyncSession, task_id: str) -> str | None:
    """The end user whose token made the task (None: its tenant's key)."""
    return (await session.execute(select(Task.end_user).where(Task.id == task_id))).scalar_one_or_none()


async def usage(session: AsyncSession, tenant_id: str) -> tuple[int, int, int]:
    """(images kept, their bytes, copies pending) of one tenant."""
    kept = func.count().filter(KeptImage.state == KeptState.KEPT)
    size = func.coalesce(func.sum(KeptImage.size).filter(KeptImage.state == KeptState.KEPT), 0)
    pending = func.count().filter(KeptImage.state == KeptState.PENDING)
    stmt = select(kept, size, pending).where(KeptImage.tenant_id == tenant_id, KeptImage.state.in_(_LIVE))
    row = (await session.execute(stmt)).one()
    return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)


async def bytes_by_tenant(session: AsyncSession) -> dict[str, int]:
    """Bytes kept per tenant (the metrics' gauge)."""
    stmt = (
        select(KeptImage.tenant_id, func.sum(KeptImage.size))
        .where(KeptImage.state == KeptState.KEPT)
        .group_by(KeptImage.tenant_id)
    )
    return {tenant_id: int(total or 0) for tenant_id, total in (await session.execute(stmt)).all()}


async def any_due(session: AsyncSession, now: dt.datetime) -> bool:
    """Whether a copy or a deletion is due (an idle tick is this one read)."""
    copy = select(_KEPT.c.task_id).where(_KEPT.c.state == KeptState.PENDING, _KEPT.c.next_try_at <= now).limit(1)
    expired = select(_KEPT.c.task_id).where(_KEPT.c.state.in_(_LIVE), _KEPT.c.keep_until <= now).limit(1)
    found = await session.execute(copy.union_all(expired).limit(1))
    return found.first() is not None


async def end_retention(session: AsyncSession, tenant_id: str, now: dt.datetime) -> int:
    """Ops delete a tenant's images: every live one's retention ends now (the sweeper deletes them; callers are
    handed the upstream's links from this moment). The number of images."""
    stmt = (
        update(_KEPT)
        .where(_KEPT.c.tenant_id == tenant_id, _KEPT.c.state.in_(_LIVE))
        .values(keep_until=now, updated_at=now)
    )
    return int((await session.execute(stmt)).rowcount or 0)  # type: ignore[attr-defined]


async def set_retention(session: AsyncSession, tenant_id: str, days: int | None, default_days: int) -> None:
    """A tenant's retention (None: the gateway's default), applied to its live images too."""
    await session.execute(update(Tenant).where(Tenant.id == tenant_id).values(result_retention_days=days))
    effective = default_days if days is None else days
    stmt = (
        update(_KEPT)
        .where(_KEPT.c.tenant_id == tenant_id, _KEPT.c.state.in_(_LIVE))
        .values(keep_until=_KEPT.c.completed_at + func.make_interval(0, 0, 0, effective))
    )
    await session.execute(stmt)
