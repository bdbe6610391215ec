"""A task's end in one statement: the task row made terminal (unless it already is), its quota reservation settled
(app/quotas/repository.py `settle_ctes`), its slot on its upstream key freed (app/upstream/repository.py
`release_slot_sql`), and its tenant's webhook URL read for the end's events (app/webhooks/repository.py
`tenant_webhook_url_sql`).

Separately these were four statements, each a round trip with SQLAlchemy's work around it, and the reconciler ends
every task.

Rows are locked in the order every other writer uses: the task, then the tenant's counters (in the reservation's
order, app/quotas/repository.py), then the key's row. The key's update waits for the counters' (the key it updates
is read through them), because PostgreSQL runs the sub-statements of one WITH in no promised order.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any, cast

from sqlalchemy import Integer, String, Table, TextClause, bindparam, column, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db.base import UTCDateTime
from app.models.task import OPEN_STATUSES, Task, TaskStatus
from app.quotas.repository import settle_ctes
from app.upstream.repository import release_slot_sql
from app.webhooks.repository import tenant_webhook_url_sql

_TASKS = cast(Table, Task.__table__)
_COLUMNS = tuple(column.name for column in _TASKS.c)
# The ended task's key, read once the counters are updated: the key's row is locked after them.
_ENDED_KEY_AFTER_COUNTERS = "(SELECT upstream_key_id FROM ended WHERE (SELECT count(*) FROM counted) >= 0)"


@functools.lru_cache(maxsize=32)
def _statement(columns: frozenset[str]) -> TextClause:
    names = sorted(columns)
    open_statuses = ", ".join(f"'{TaskStatus(status).value}'" for status in sorted(OPEN_STATUSES))
    returned = ", ".join(_COLUMNS)
    ended_and_reserved = f"""ended AS (
        UPDATE tasks SET {", ".join(f"{name} = :{name}" for name in names)}
        WHERE id = :task_id AND status IN ({open_statuses})
        RETURNING {returned}
    ), reserved AS (
        SELECT r.tenant_id, r.images, r.day, r.month, r.end_user,
            CASE WHEN e.status = '{TaskStatus.COMPLETED.value}' OR e.outcome_unknown
                THEN CAST(:produced AS integer) ELSE 0 END AS charged
        FROM quota_entries r JOIN ended e ON r.task_id = e.id
        WHERE r.kind = 'reserve'
    )"""
    sql = (
        "WITH"
        + settle_ctes(ended_and_reserved)
        + f""", slot AS ({release_slot_sql(_ENDED_KEY_AFTER_COUNTERS)})
    SELECT """
        + ", ".join(f"ended.{name}" for name in _COLUMNS)
        + f""", {tenant_webhook_url_sql("ended.tenant_id")} AS tenant_webhook_url,
        (SELECT count(*) FROM slot) AS slots_freed
    FROM ended"""
    )
    params = [bindparam(name, type_=_TASKS.c[name].type) for name in names]
    params += [bindparam("produced", type_=Integer), bindparam("now", type_=UTCDateTime())]
    typed = (*_TASKS.c, column("tenant_webhook_url", String), column("slots_freed", Integer))
    return cast(TextClause, text(sql).bindparams(*params).columns(*typed))


async def end(
    session: AsyncSession, task_id: str, values: dict[str, Any], produced: int, now: dt.datetime
) -> tuple[Task, str | None] | None:
    """Make the task terminal with `values` (which set a terminal status), settle its reservation charging `produced`
    images if it completed (or its create may have been billed: outcome unknown), 0 otherwise, and free its key's
    slot. The ended task and its tenant's webhook URL; None when the task was terminal already (nothing changed)."""
    params = {**values, "task_id": task_id, "produced": produced, "now": now}
    result = await session.execute(_statement(frozenset(values)), params)
    row = result.first()
    if row is None:
        return None
    fields = row._asdict()
    tenant_webhook_url = fields.pop("tenant_webhook_url")
    fields.pop("slots_freed")
    return Task(**fields), tenant_webhook_url
