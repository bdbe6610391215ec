"""Admitting a task: its ledger row, its quota reservation and its slot on an upstream key, in one
statement sent outside any explicit transaction (one round trip, where BEGIN, three statements and COMMIT took five).

- The reservation is the quota rule's own SQL (app/quotas/repository.reserve_ctes) and the slot the pool's
  (app/upstream/repository.take_slot_sql), embedded as data-modifying CTEs: the public fragments those features'
  repositories export for it.
- When a counter does not take the reservation, the statement raises (gateway_refuse_admission, migration 0005),
  which undoes every part of it; the error carries the periods that did fit, so the caller can say which did not.
- When the key gives no slot (another replica cooled or filled it), the task is admitted `waiting` instead: the
  caller then tries another key or leaves it to the reconciler.
- Counter rows are locked in the reservation's order (day, month, in flight), then the key's row: the order the
  settle transaction uses, so the two cannot deadlock.

The statement runs on the caller's connection in autocommit (app/core/db/engine.autocommit_engine), sent on the
driver's connection (app/core/db/driver.py: compiled once by SQLAlchemy, SQLAlchemy's errors; why, measured there).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import Table, TextClause, bindparam, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.db import driver
from app.core.db.base import UTCDateTime
from app.models.task import Task, TaskStatus
from app.quotas.repository import Reservation, reserve_ctes, reserve_params, reserved_counters
from app.upstream.repository import take_slot_sql

_TASKS = cast(Table, Task.__table__)
REFUSED_SQLSTATE = "GW001"  # raised by gateway_refuse_admission

# Columns whose value depends on whether the key gave a slot.
_ON_SLOT = {
    "status": "CASE WHEN EXISTS (SELECT 1 FROM slot) THEN :status_sent ELSE :status_waiting END",
    "upstream_key_id": "(SELECT id FROM slot)",
    "next_check_at": "CASE WHEN EXISTS (SELECT 1 FROM slot) THEN :check_sent ELSE :check_waiting END",
    "attempts": "CASE WHEN EXISTS (SELECT 1 FROM slot) THEN 1 ELSE 0 END",
}
_SET_HERE = {*_ON_SLOT}
# With a slot, the caller always writes again before it answers (the upstream's answer, or the failure), and that
# commit is durable: its WAL flush carries this statement's commit with it. So this commit need not wait for its own
# flush (one disk flush per submit instead of two). Without a slot the task is answered `queued` from this commit
# alone: durable. set_config(..., true) lasts until this statement's own transaction ends, never beyond it.
_DURABILITY = "CASE WHEN EXISTS (SELECT 1 FROM slot) THEN set_config('synchronous_commit', 'off', true) END"


class AdmissionRefused(Exception):
    """A quota counter did not take the reservation; nothing was written."""

    def __init__(self, fitted: set[str]) -> None:
        super().__init__("admission refused")
        self.fitted = fitted


def _statement(with_quota: bool, end_user: bool = False) -> TextClause:
    names = [column.name for column in _TASKS.c]
    values = [_ON_SLOT.get(name, f":t_{name}") for name in names]
    ctes = [f"slot AS ({take_slot_sql(now=':slot_now')})"]
    if with_quota:
        # `counters`, then `entry`: the counters lock before the key's row (an end user's day too, for a token's task)
        ctes.insert(0, reserve_ctes(end_user=end_user))
        answer = (
            f"SELECT CASE WHEN (SELECT count(*) FROM counters) = {reserved_counters(end_user=end_user)} "
            "THEN EXISTS (SELECT 1 FROM slot) "
            "ELSE gateway_refuse_admission((SELECT string_agg(period, ',') FROM counters)) END"
        )
    else:
        answer = "SELECT EXISTS (SELECT 1 FROM slot)"
    ctes.append(f"task AS (INSERT INTO tasks ({', '.join(names)}) VALUES ({', '.join(values)}))")
    sql = "WITH " + ",\n".join(ctes) + "\n" + answer + f", {_DURABILITY}"
    params = [bindparam(f"t_{c.name}", type_=c.type) for c in _TASKS.c if c.name not in _SET_HERE]
    params += [
        bindparam("slot_now", type_=UTCDateTime()),
        bindparam("check_sent", type_=UTCDateTime()),
        bindparam("check_waiting", type_=UTCDateTime()),
    ]
    if with_quota:
        params += reserve_params(end_user=end_user)
    return text(sql).bindparams(*params)


_WITH_QUOTA = driver.Statement(_statement(with_quota=True))
_WITH_END_USER_QUOTA = driver.Statement(_statement(with_quota=True, end_user=True))
_WITHOUT_QUOTA = driver.Statement(_statement(with_quota=False))


def _column_values(task: Task) -> dict[str, Any]:
    """The row's values as the ORM would insert them (a column's scalar default where the task has no value)."""
    values: dict[str, Any] = {}
    for column in _TASKS.c:
        if column.name in _SET_HERE:
            continue
        value = getattr(task, column.key)
        if value is None and column.default is not None and getattr(column.default, "is_scalar", False):
            value = column.default.arg  # type: ignore[attr-defined]
            setattr(task, column.key, value)
        values[f"t_{column.name}"] = value
    return values


async def admit(
    connection: AsyncConnection,
    task: Task,
    reservation: Reservation | None,
    key_id: str | None,
    *,
    check_sent: dt.datetime,
    check_waiting: dt.datetime,
) -> bool:
    """Insert `task` with its reservation (None: quotas off) and a slot on `key_id` (None: no key now); True when
    the key gave the slot (the task is `submitting` on it), False when it is admitted `waiting`.

    AdmissionRefused when a counter refused (nothing written); IntegrityError when its Idempotency-Key is taken.
    `task` is updated to what was written. `connection`: one in autocommit (the statement is its own transaction).
    """
    params = _column_values(task)
    params.update(
        key_id=key_id,
        slot_now=task.created_at,
        status_sent=TaskStatus.SUBMITTING.value,
        status_waiting=TaskStatus.WAITING.value,
        check_sent=check_sent,
        check_waiting=check_waiting,
    )
    if reservation is not None:
        params.update(reservation.params())
    try:
        if reservation is None:
            statement = _WITHOUT_QUOTA
        else:
            statement = _WITH_QUOTA if reservation.end_user is None else _WITH_END_USER_QUOTA
        slotted = bool(await statement.scalar(connection, params))
    except DBAPIError as e:
        if getattr(e.orig, "sqlstate", None) != REFUSED_SQLSTATE:
            raise
        detail = getattr(e.orig, "detail", None) or ""
        raise AdmissionRefused({period for period in detail.split(",") if period}) from None
    task.status = TaskStatus.SUBMITTING if slotted else TaskStatus.WAITING
    task.upstream_key_id = key_id if slotted else None
    task.next_check_at = check_sent if slotted else check_waiting
    task.attempts = 1 if slotted else 0
    return slotted
