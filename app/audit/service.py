"""The audit log of admin actions: who did what, when, to what, and the outcome; never a secret value.

Every feature that changes something on an operator's behalf writes its event with `record_audit`, inside the
transaction of the change, so the change and its event commit (or roll back) together. A refused action (unknown
target, conflict) may be written with outcome "refused" in a transaction of its own (`AuditService.record`).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit import repository as repo
from app.audit.schemas import AuditEventOut, AuditList
from app.core.clock import Clock
from app.core.pagination import DEFAULT_PAGE, Cursor
from app.models import AuditEvent

# Who acted: the ops API's bearer token, or the command line (features may add their own, e.g. "system").
ACTOR_ADMIN_TOKEN = "admin-token"
ACTOR_CLI = "cli"

# What a text column can hold on both databases: no C0 control character (PostgreSQL refuses NUL), no lone surrogate.
_UNSTORABLE = re.compile(r"[\x00-\x1f\ud800-\udfff]")
EVENT_CURSOR = Cursor.of_serials()


def _text(value: str, max_chars: int) -> str:
    return _UNSTORABLE.sub("\ufffd", value)[:max_chars]


def _storable(value: Any) -> Any:
    """`detail` made storable as JSON on both databases (strings cleaned, everything else as a string)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _text(value, 1000)
    if isinstance(value, dict):
        return {_text(str(k), 100): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_storable(v) for v in value]
    return _text(str(value), 1000)


async def record_audit(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: str | None,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
    now: dt.datetime,
) -> None:
    """Write one audit event in the caller's transaction. `detail` must never hold a secret (a key, a token): name
    things by their public ids. Values are cut to their columns' sizes and cleaned of what a text column refuses."""
    await repo.insert(
        session,
        AuditEvent(
            created_at=now,
            actor=_text(actor, 64),
            action=_text(action, 64),
            target_type=_text(target_type, 32),
            target_id=None if target_id is None else _text(target_id, 64),
            outcome=_text(outcome, 16),
            detail=None if detail is None else _storable(detail),
        ),
    )


class AuditService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Clock) -> None:
        self._sessions = sessions
        self._clock = clock

    async def record(
        self,
        *,
        actor: str,
        action: str,
        target_type: str,
        target_id: str | None,
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
    ) -> None:
        """One event in a transaction of its own (a refused action, whose own transaction rolled back)."""
        async with self._sessions.begin() as session:
            await record_audit(
                session,
                actor=actor,
                action=action,
                target_type=target_type,
                target_id=target_id,
                outcome=outcome,
                detail=detail,
                now=self._clock(),
            )

    async def list(
        self,
        *,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
        target_id: str | None = None,
        action: str | None = None,
    ) -> AuditList:
        """A page of events, newest first; `cursor` is the previous page's `next_cursor`."""
        page = EVENT_CURSOR.request(limit, cursor)
        async with self._sessions() as session:
            events = await repo.page(
                session,
                limit=page.fetch,
                before_id=None if page.after is None else int(page.after),
                target_id=target_id,
                action=action,
            )
        return AuditList.of(events, page, AuditEventOut.of)
