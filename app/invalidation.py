"""The one invalidation mechanism: how every replica learns, within a second, that something it may cache changed.

A service that changes a tenant, a key or an upstream key calls `record(session, topic, key)` inside the transaction
that makes the change, so the change and its event commit (or roll back) together. Every process runs one
`Invalidator`, which reads new events every `interval_s` (one indexed range read; 0.25 s by default, so a change
reaches every replica in well under a second on PostgreSQL and SQLite alike) and calls the callbacks subscribed to
their topic. While the events cannot be read (database away), `fresh` turns false: caches must then not be trusted
(bypass them) until it is true again, when every subscriber is told to drop everything (`key == ""`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Literal

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.background import cancel_and_wait
from app.core.clock import Clock
from app.core.db.engine import READ_ONLY
from app.models import InvalidationEvent

log = logging.getLogger(__name__)

Topic = Literal["tenant", "tenant_key", "upstream_key"]
TOPICS: tuple[Topic, ...] = ("tenant", "tenant_key", "upstream_key")
ALL = ""  # the key that means "every row of the topic"
Callback = Callable[[str], None]

DEFAULT_INTERVAL_S = 0.25
KEEP_EVENTS = dt.timedelta(minutes=10)
_BATCH = 1000


_RECORDED = "gw_invalidations"  # session.info: what record() wrote in the session, for apply_recorded()


async def record(session: AsyncSession, topic: Topic, key: str = ALL, *, now: dt.datetime) -> None:
    """Record that `key` of `topic` changed, in the caller's transaction (services call this, never routers)."""
    await session.execute(insert(InvalidationEvent).values(topic=topic, key=key, created_at=now))
    session.info.setdefault(_RECORDED, []).append((topic, key))


class Invalidator:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], clock: Clock, interval_s: float = DEFAULT_INTERVAL_S
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._interval_s = interval_s
        self._subscribers: dict[str, list[Callback]] = defaultdict(list)
        self._last_id: int | None = None
        self._last_read: float | None = None  # time.monotonic() of the last successful read
        self._task: asyncio.Task[None] | None = None

    @property
    def bound_s(self) -> float:
        """The longest a change takes to reach this process while `fresh` (the README's stated bound)."""
        return 2 * self._interval_s

    @property
    def fresh(self) -> bool:
        """Whether events were read recently enough that caches may be trusted."""
        if self._last_read is None:
            return False
        return time.monotonic() - self._last_read <= self.bound_s  # (asked on every request: no loop lookup)

    def subscribe(self, topic: Topic, callback: Callback) -> None:
        """Call `callback(key)` for every change of `topic` (`key == ""`: drop everything of the topic)."""
        self._subscribers[topic].append(callback)

    def apply_recorded(self, session: AsyncSession) -> None:
        """Tell this process's subscribers at once what a committed session recorded (the others learn it from the
        events): a change made through a replica holds on that replica from the moment it is answered."""
        for topic, key in session.info.pop(_RECORDED, ()):
            for callback in self._subscribers.get(topic, ()):
                callback(key)

    async def poll_once(self) -> int:
        """Read and apply the events since the last read; the number applied.

        After a failed read (database away, or replaced: a restored backup restarts the event ids) nothing read
        before can be trusted: the first read that works starts again from the newest event and tells every
        subscriber to drop everything, as at start. Until then `fresh` is false, so caches are bypassed.
        """
        try:
            async with self._sessions() as session:
                await session.connection(execution_options={READ_ONLY: True})
                if self._last_id is None:  # start from now: nothing cached before is trusted
                    self._last_id = (await session.execute(select(func.max(InvalidationEvent.id)))).scalar() or 0
                    rows = []
                else:
                    stmt = (
                        select(InvalidationEvent.id, InvalidationEvent.topic, InvalidationEvent.key)
                        .where(InvalidationEvent.id > self._last_id)
                        .order_by(InvalidationEvent.id)
                        .limit(_BATCH)
                    )
                    rows = list((await session.execute(stmt)).all())
        except BaseException:
            self._last_read = None  # not fresh from now on
            self._last_id = None
            raise
        was_fresh = self._last_read is not None and self.fresh
        self._last_read = time.monotonic()
        if not was_fresh:  # events may have been missed: everything cached is suspect
            self._notify_all()
        for event_id, topic, key in rows:
            self._last_id = event_id
            for callback in self._subscribers.get(topic, ()):
                callback(key)
        return len(rows)

    async def prune(self) -> None:
        """Forget events older than any replica can still need."""
        async with self._sessions.begin() as session:
            await session.execute(
                delete(InvalidationEvent).where(InvalidationEvent.created_at < self._clock() - KEEP_EVENTS)
            )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="invalidator")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def _notify_all(self) -> None:
        for callbacks in self._subscribers.values():
            for callback in callbacks:
                callback(ALL)

    async def _run(self) -> None:
        reads = 0
        while True:
            try:
                await self.poll_once()
                reads += 1
                if reads % 2400 == 0:  # about every 10 minutes
                    await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database is away: caches stop being trusted (fresh turns false)
                log.debug("invalidation read failed: %s", type(e).__name__)
            await asyncio.sleep(self._interval_s)
