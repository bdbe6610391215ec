"""SQL for the upstream key pool. Every state change is one conditional statement (no read-then-write)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, Table, and_, bindparam, or_, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db.base import UTCDateTime
from app.models import UpstreamKey, UpstreamKeyStatus

# Statuses in which a key takes new tasks (a cooling key once its cooldown has passed).
TAKES_NEW = (UpstreamKeyStatus.ACTIVE, UpstreamKeyStatus.COOLING)
_KEYS = cast(Table, UpstreamKey.__table__)


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else int(getattr(result, "rowcount", 0) or 0)


async def get(session: AsyncSession, key_id: str) -> UpstreamKey | None:
    return (await session.execute(select(UpstreamKey).where(UpstreamKey.id == key_id))).scalar_one_or_none()


async def get_many(session: AsyncSession, key_ids: Collection[str]) -> Sequence[UpstreamKey]:
    stmt = select(UpstreamKey).where(UpstreamKey.id.in_(list(key_ids)))
    return (await session.execute(stmt)).scalars().all()


async def list_all(session: AsyncSession) -> Sequence[UpstreamKey]:
    return (await session.execute(select(UpstreamKey).order_by(UpstreamKey.id))).scalars().all()


async def page(session: AsyncSession, *, limit: int, after_id: str | None) -> Sequence[UpstreamKey]:
    """Keys in id order (ids are time-sortable: oldest first), after `after_id`."""
    stmt = select(UpstreamKey).order_by(UpstreamKey.id).limit(limit)
    if after_id is not None:
        stmt = stmt.where(UpstreamKey.id > after_id)
    return (await session.execute(stmt)).scalars().all()


async def find_by_fingerprints(session: AsyncSession, fingerprints: Sequence[str]) -> UpstreamKey | None:
    stmt = select(UpstreamKey).where(UpstreamKey.fingerprint.in_(list(fingerprints))).limit(1)
    return (await session.execute(stmt)).scalar_one_or_none()


async def insert(session: AsyncSession, key: UpstreamKey) -> None:
    session.add(key)
    await session.flush()


async def insert_if_new(session: AsyncSession, values: dict[str, Any]) -> bool:
    """Insert a key unless one with its fingerprint exists (two replicas seeding the same key at once)."""
    stmt = postgresql.insert(_KEYS).values(**values).on_conflict_do_nothing(index_elements=["fingerprint"])
    return _rowcount(await session.execute(stmt)) > 0


async def change(session: AsyncSession, key_id: str, values: dict[str, Any], *where: Any) -> UpstreamKey | None:
    """Apply `values` to the key if the conditions hold; the updated row, or None (nothing changed)."""
    stmt = (
        update(UpstreamKey)
        .where(UpstreamKey.id == key_id, *where)
        .values(**values)
        .returning(UpstreamKey)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


# --- the hot path: one statement each ----------------------------------------------------------------------------
# The slot rules are this module's public fragments: the statements that admit a task and end it
# (app/tasks/admission.py, app/tasks/ending.py) embed them, so each rule is written once and runs one way.
def take_slot_sql(now: str = ":now") -> str:
    """Count one more task in flight on the key `:key_id`, if it takes new tasks at `now` (a bind parameter's
    name, UTCDateTime) and its cap has room; RETURNING its id, so no row means no slot. The one statement of that
    rule: take_slot runs it, and the admission statement (app/tasks/admission.py) embeds it as a CTE."""
    return f"""
    UPDATE upstream_keys SET in_flight = in_flight + 1
    WHERE id = :key_id AND status IN ({", ".join(f"'{status}'" for status in TAKES_NEW)})
      AND (cooling_until IS NULL OR cooling_until <= {now})
      AND (max_in_flight IS NULL OR in_flight < max_in_flight)
    RETURNING id
"""


_TAKE_SLOT = text(take_slot_sql()).bindparams(bindparam("now", type_=UTCDateTime()))


async def take_slot(session: AsyncSession, key_id: str, now: dt.datetime) -> bool:
    """Count one more task in flight on the key, if it takes new tasks now and its cap has room.

    The database has the last word: a key another replica just cooled, drained or filled is refused here even
    if this process has not heard of it yet.
    """
    return (await session.execute(_TAKE_SLOT, {"key_id": key_id, "now": now})).first() is not None


def release_slot_sql(key: str = ":key_id") -> str:
    """One task fewer in flight on the key that `key` gives (a parameter, or a scalar subquery of the statement that
    embeds it), never below zero; RETURNING its id. The one statement of that rule: release_slot runs it, and a
    task's end (app/tasks/ending.py) embeds it as a CTE."""
    return f"UPDATE upstream_keys SET in_flight = in_flight - 1 WHERE id = {key} AND in_flight > 0 RETURNING id"


_RELEASE_SLOT = text(release_slot_sql())


async def release_slot(session: AsyncSession, key_id: str) -> None:
    """One task fewer in flight on the key (never below zero)."""
    await session.execute(_RELEASE_SLOT, {"key_id": key_id})


# --- health --------------------------------------------------------------------------------------------------------
async def cool(session: AsyncSession, key_id: str, until: dt.datetime, reason: str, now: dt.datetime) -> bool:
    """Cool a key that takes new tasks until `until` (a longer cooldown already set is kept)."""
    stmt = (
        update(_KEYS)
        .where(
            _KEYS.c.id == key_id,
            _KEYS.c.status.in_(TAKES_NEW),
            or_(_KEYS.c.cooling_until.is_(None), _KEYS.c.cooling_until < until),
        )
        .values(status=UpstreamKeyStatus.COOLING, cooling_until=until, status_reason=reason, updated_at=now)
    )
    return _rowcount(await session.execute(stmt)) > 0


async def disable(session: AsyncSession, key_id: str, reason: str, now: dt.datetime) -> bool:
    """Disable a key the upstream refused, unless it is already out of the rotation (draining, retired, disabled)."""
    stmt = (
        update(_KEYS)
        .where(_KEYS.c.id == key_id, _KEYS.c.status.in_(TAKES_NEW))
        .values(
            status=UpstreamKeyStatus.DISABLED,
            status_reason=reason,
            cooling_until=None,
            last_probe_at=now,
            updated_at=now,
        )
    )
    return _rowcount(await session.execute(stmt)) > 0


async def count_error(session: AsyncSession, key_id: str) -> int | None:
    """One more consecutive upstream error on the key; the new count (None: no such key)."""
    stmt = (
        update(_KEYS)
        .where(_KEYS.c.id == key_id)
        .values(consecutive_errors=_KEYS.c.consecutive_errors + 1)
        .returning(_KEYS.c.consecutive_errors)
    )
    value = (await session.execute(stmt)).scalar_one_or_none()
    return None if value is None else int(value)


async def reset_errors(session: AsyncSession, key_id: str) -> bool:
    stmt = update(_KEYS).where(_KEYS.c.id == key_id, _KEYS.c.consecutive_errors > 0).values(consecutive_errors=0)
    return _rowcount(await session.execute(stmt)) > 0


async def claim_probe(
    session: AsyncSession, key_id: str, now: dt.datetime, interval: dt.timedelta, reason_prefix: str
) -> bool:
    """Take the right to probe a key the upstream refused: one replica per interval."""
    stmt = (
        update(_KEYS)
        .where(
            _KEYS.c.id == key_id,
            _KEYS.c.status == UpstreamKeyStatus.DISABLED,
            _KEYS.c.status_reason.startswith(reason_prefix, autoescape=True),
            or_(_KEYS.c.last_probe_at.is_(None), _KEYS.c.last_probe_at < now - interval),
        )
        .values(last_probe_at=now)
    )
    return _rowcount(await session.execute(stmt)) > 0


async def reenable(session: AsyncSession, key_id: str, reason_prefix: str, now: dt.datetime) -> bool:
    """Put a key the upstream refused back in the rotation (only if nobody changed its state meanwhile)."""
    stmt = (
        update(_KEYS)
        .where(
            _KEYS.c.id == key_id,
            and_(
                _KEYS.c.status == UpstreamKeyStatus.DISABLED,
                _KEYS.c.status_reason.startswith(reason_prefix, autoescape=True),
            ),
        )
        .values(
            status=UpstreamKeyStatus.ACTIVE,
            status_reason=None,
            cooling_until=None,
            consecutive_errors=0,
            updated_at=now,
        )
    )
    return _rowcount(await session.execute(stmt)) > 0
