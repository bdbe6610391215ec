"""The audit log of admin actions: who did what, when, to what, and the outcome; never a secret value.

Every feature that changes something on an operator's behalf runs the change through `AuditService.action`, the one
audited action: the change and its event in one transaction (they commit or roll back together); a refusal (a 4xx:
unknown target, conflict, invalid value) rolled back and written with outcome "refused" in a transaction of its own,
with the same detail keys everywhere (`error`, `status`); and the action's own error is what the caller hears, even
when writing its refusal fails too. Whatever looks like a secret (a key, a webhook signing secret) is redacted from
every event, target and detail alike, by the rule the access lines follow (`app.core.security.redact_key`).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit import repository as repo
from app.audit.schemas import AuditEventOut, AuditList
from app.core.clock import Clock
from app.core.errors import GatewayError
from app.core.pagination import DEFAULT_PAGE, Cursor
from app.core.security import redact_key
from app.models import AuditEvent

log = logging.getLogger(__name__)

# Who acted: the ops API's bearer token, or the command line (features may add their own, e.g. "system").
ACTOR_ADMIN_TOKEN = "admin-token"
ACTOR_CLI = "cli"
ACTOR_CONSOLE = "console"  # the ops console (/admin/ui), signed in with the admin token
OUTCOME_OK = "ok"
OUTCOME_REFUSED = "refused"

# What a text column can hold on both databases: no C0 control character (PostgreSQL refuses NUL), no lone surrogate.
_UNSTORABLE = re.compile(r"[\x00-\x1f\ud800-\udfff]")
EVENT_CURSOR = Cursor.of_serials()


def _text(value: str, max_chars: int) -> str:
    return _UNSTORABLE.sub("\ufffd", redact_key(value))[:max_chars]


def _storable(value: Any) -> Any:
    """`detail` made storable as JSON on both databases (strings redacted and cleaned, everything else as a
    string)."""
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
    outcome: str = OUTCOME_OK,
    detail: dict[str, Any] | None = None,
    now: dt.datetime,
) -> None:
    """Write one audit event in the caller's transaction. `detail` should name things by their public ids; any text
    that looks like a secret is redacted all the same, and values are cut to their columns' sizes and cleaned of
    what a text column refuses."""
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


@dataclass
class AuditedAction:
    """One admin action under way: its transaction, its moment, and what its event will say. The change names its
    target once found (`done`: its public id, and its type when the action made another kind of thing, e.g. a key
    created on a tenant) and what changed; `action` may be refined (`tenant.disable` for a `tenant.update` that only
    disables)."""

    session: AsyncSession
    now: dt.datetime
    action: str
    target_type: str
    target_id: str | None
    detail: dict[str, Any] | None = None

    def done(
        self,
        target_id: str | None,
        detail: dict[str, Any] | None = None,
        *,
        action: str | None = None,
        target_type: str | None = None,
    ) -> None:
        """What the event says when the transaction commits."""
        self.target_id = target_id
        self.detail = detail
        self.action = action or self.action
        self.target_type = target_type or self.target_type


# Turns an error that is not a GatewayError (e.g. a unique constraint hit by a concurrent change) into the refusal
# the caller should hear, or None to let it through unchanged.
Translate = Callable[[Exception], GatewayError | None]


class AuditService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Clock) -> None:
        self._sessions = sessions
        self._clock = clock

    @asynccontextmanager
    async def action(
        self,
        actor: str,
        action: str,
        target_type: str,
        target_ref: str | None,
        *,
        translate: Translate | None = None,
    ) -> AsyncIterator[AuditedAction]:
        """The one audited admin action: the body's change and its event (`AuditedAction.done`) commit together
        when the block ends. A refusal (a GatewayError below 500, or what `translate` makes of another error) rolls
        the change back, is written as "refused" on `target_ref` (what the operator typed) in a transaction of its
        own, and is raised; a failure to write that event is logged, never raised in its place. Other errors (the
        database gone, a bug) are raised as they are, unaudited: nothing was done, and nobody refused anything."""
        now = self._clock()
        try:
            async with self._sessions.begin() as session:
                audited = AuditedAction(session, now, action, target_type, target_ref)
                yield audited
                await record_audit(
                    session,
                    actor=actor,
                    action=audited.action,
                    target_type=audited.target_type,
                    target_id=audited.target_id,
                    detail=audited.detail,
                    now=now,
                )
        except Exception as e:
            refusal = e if isinstance(e, GatewayError) else translate(e) if translate is not None else None
            if refusal is None or refusal.status_code >= 500:
                raise
            await self._refused(actor, action, target_type, target_ref, refusal)
            if refusal is e:
                raise
            raise refusal from e

    async def _refused(
        self, actor: str, action: str, target_type: str, target_ref: str | None, refusal: GatewayError
    ) -> None:
        try:
            async with self._sessions.begin() as session:
                await record_audit(
                    session,
                    actor=actor,
                    action=action,
                    target_type=target_type,
                    target_id=target_ref,
                    outcome=OUTCOME_REFUSED,
                    detail={"error": str(refusal.code), "status": refusal.status_code},
                    now=self._clock(),
                )
        except Exception as e:  # the refusal itself is what the caller must hear
            log.warning("could not audit a refused %s: %s", action, type(e).__name__)

    async def list(
        self,
        *,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
        target_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        outcome: str | None = None,
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
                actor=actor,
                outcome=outcome,
            )
        return AuditList.of(events, page, AuditEventOut.of)
