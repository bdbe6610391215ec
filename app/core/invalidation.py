"""The one invalidation mechanism: how every replica learns, within a second, that something it may cache changed.

A service that changes a tenant, a key or an upstream key calls `record(session, topic, key)` inside the transaction
that makes the change, so the change and its event commit (or roll back) together. Every process runs one
`Invalidator`, which reads new events every `interval_s` (one indexed read; 0.25 s by default, so a change reaches
every replica in well under a second) and calls the callbacks subscribed to their topic. While the events cannot be
read (database away), `fresh` turns false: caches must then not be trusted (bypass them) until it is true again, when
every subscriber is told to drop everything (`key == ""`).

Events commit out of id order. PostgreSQL hands out an event's id when its row is inserted, not when its transaction
commits, so a reader can see id 12 while id 11's transaction is still open (waiting on a lock, say) and will commit
later. An id skipped that way (a gap) is remembered and read again, in the same statement as the new events, until it
appears or until no transaction that could still commit it is running: PostgreSQL's snapshot says so exactly
(`pg_snapshot_xmin`: every transaction older than it has ended), so a gap is let go only when its id was rolled back,
never because its transaction took long.

The database itself may change without a failed read: a connection found lost (it may come back as another
database), or a new connection that reaches another one (dropped and created again, restored, failed over). The
engine's continuity says so (app/core/db/continuity.py): `fresh` turns false at once, and the next read starts over
from the newest event and drops everything, as after a failed read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, insert, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.background import cancel_and_wait
from app.core.clock import Clock
from app.core.db import continuity as db_continuity
from app.core.db.engine import reads_only
from app.models import InvalidationEvent

log = logging.getLogger(__name__)

Topic = Literal["tenant", "tenant_key", "upstream_key"]
TOPICS: tuple[Topic, ...] = ("tenant", "tenant_key", "upstream_key")
ALL = ""  # the key that means "every row of the topic"
Callback = Callable[[str], None]

DEFAULT_INTERVAL_S = 0.25
KEEP_EVENTS = dt.timedelta(minutes=10)
_BATCH = 1000
# How long a gap is only re-read before the reader also asks whether its transaction may still be running (a second,
# tiny statement): most gaps are filled a few milliseconds later by the next read, and asking about every one at once
# would double the reads of a busy gateway. A gap whose transaction is still running is asked about again as often.
GAP_CHECK_S = 5.0
# Gaps remembered at most (far more than all replicas' connections can hold open). More means ids jumped (a sequence
# moved on by hand): those are not watched, and every subscriber drops everything instead.
MAX_GAPS = 1000
# Ids below the newest event that a (re)starting reader treats as possibly still open: more than the transactions
# all replicas can hold open at once (their pool sizes added up).
START_WINDOW = 200

_NEWEST_ID = text("SELECT pg_sequence_last_value(pg_get_serial_sequence(:table, 'id'))")
# PostgreSQL's transaction horizon, as bigint (xid8 has no cast to it but through text).
_NOT_YET_STARTED = text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
_OLDEST_RUNNING = text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")

_RECORDED = "gw_invalidations"  # session.info: what record() wrote in the session, for apply_recorded()


async def record(session: AsyncSession, topic: Topic, key: str = ALL, *, now: dt.datetime) -> None:
    """Record that `key` of `topic` changed, in the caller's transaction (services call this, never routers)."""
    await session.execute(insert(InvalidationEvent).values(topic=topic, key=key, created_at=now))
    session.info.setdefault(_RECORDED, []).append((topic, key))


@dataclass(slots=True)
class _Gap:
    """An id skipped by a read: its transaction may still commit."""

    check_at: float  # time.monotonic() from which to ask whether its transaction may still be running
    # The first transaction id not yet started just after the gap was seen (its transaction's is lower).
    horizon: int


class Invalidator:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        interval_s: float = DEFAULT_INTERVAL_S,
        gap_check_s: float = GAP_CHECK_S,
    ) -> None:
        self._sessions = sessions
        # The sessions' engine's (one Continuity per engine); a reader over anything else has none that changes.
        bind = sessions.kw.get("bind")
        self._continuity = db_continuity.of(bind) if isinstance(bind, AsyncEngine) else db_continuity.Continuity()
        self._epoch = -1  # the continuity's epoch when the last successful read began
        self._clock = clock
        self._interval_s = interval_s
        self._gap_check_s = gap_check_s
        self._subscribers: dict[str, list[Callback]] = defaultdict(list)
        self._last_id: int | None = None  # the highest id read
        self._gaps: dict[int, _Gap] = {}  # ids below it not read yet
        self._last_read: float | None = None  # time.monotonic() of the last successful read
        self._task: asyncio.Task[None] | None = None

    @property
    def bound_s(self) -> float:
        """The longest a change takes to reach this process while `fresh` (docs/quotas-and-keys.md's bound)."""
        return 2 * self._interval_s

    @property
    def fresh(self) -> bool:
        """Whether events were read recently enough that caches may be trusted."""
        if self._last_read is None or self._epoch != self._continuity.epoch:
            return False
        return time.monotonic() - self._last_read <= self.bound_s  # (asked on every request: no loop lookup)

    @property
    def waiting_for(self) -> frozenset[int]:
        """The event ids skipped by a read whose transactions may still commit (re-read on every read)."""
        return frozenset(self._gaps)

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
        """Read and apply the events since the last read, and those of earlier gaps committed since; the number
        applied.

        After a failed read (database away, or replaced: a restored backup restarts the event ids) nothing read
        before can be trusted: the first read that works starts again from the newest event and tells every
        subscriber to drop everything, as at start. Until then `fresh` is false, so caches are bypassed.
        """
        for _ in range(2):  # a read that met another database than the last is done again at once, from the start
            applied = await self._poll()
            if applied is not None:
                return applied
        return 0

    async def _poll(self) -> int | None:
        """One read (`poll_once`); None when the database changed under it (nothing applied, to be done again)."""
        epoch = self._continuity.epoch
        if epoch != self._epoch:  # the database may have changed since the last read: start over
            self._forget()
        try:
            async with self._sessions() as session:
                await reads_only(session)
                if self._last_id is None:  # start from now: nothing cached before is trusted
                    await self._start(session)
                    events: list[tuple[str, str]] = []
                    lost = False
                else:
                    events, lost = await self._read(session)
        except BaseException:
            self._forget()
            raise
        if self._continuity.epoch != epoch:  # the read itself met another database (or lost one): not trusted
            self._forget()
            return None
        self._epoch = epoch
        was_fresh = self._last_read is not None and self.fresh
        self._last_read = time.monotonic()
        if lost or not was_fresh:  # events may have been missed: everything cached is suspect
            self._notify_all()
        for topic, key in events:
            for callback in self._subscribers.get(topic, ()):
                callback(key)
        return len(events)

    def _forget(self) -> None:
        """Trust nothing read so far: not fresh, and the next read starts over (dropping everything)."""
        self._last_read = None
        self._last_id = None
        self._gaps.clear()

    async def _start(self, session: AsyncSession) -> None:
        """Start after the newest id handed out; the ids missing just below it may belong to transactions still open
        (their events are read when they commit)."""
        # The sequence's: the newest event may not be committed yet, or the table be empty.
        newest = await session.scalar(_NEWEST_ID, {"table": InvalidationEvent.__tablename__}) or 0
        window = range(max(newest - START_WINDOW + 1, 1), newest + 1)
        stmt = select(InvalidationEvent.id).where(InvalidationEvent.id.between(window.start, window.stop - 1))
        present = set((await session.scalars(stmt)).all())
        self._last_id = newest
        await self._watch(session, [event_id for event_id in window if event_id not in present])

    async def _read(self, session: AsyncSession) -> tuple[list[tuple[str, str]], bool]:
        """One round: the events after the last one read and those of the gaps, in id order; and whether gaps had
        to be given up (`lost`: every subscriber drops everything)."""
        assert self._last_id is not None
        now = time.monotonic()
        # Asked before the read: a gap whose transactions had all ended by then and that this read does not find
        # was rolled back, and is let go.
        settled = await self._settled_gaps(session, now)
        where = InvalidationEvent.id > self._last_id
        if self._gaps:
            where = or_(where, InvalidationEvent.id.in_(sorted(self._gaps)))
        stmt = (
            select(InvalidationEvent.id, InvalidationEvent.topic, InvalidationEvent.key)
            .where(where)
            .order_by(InvalidationEvent.id)
            .limit(_BATCH)
        )
        events: list[tuple[str, str]] = []
        skipped: list[int] = []
        lost = False
        for event_id, topic, key in (await session.execute(stmt)).all():
            if event_id > self._last_id:
                if event_id - self._last_id - 1 <= MAX_GAPS - len(self._gaps) - len(skipped):
                    skipped.extend(range(self._last_id + 1, event_id))
                else:  # more than can be watched: those ids are not, and everything cached is dropped instead
                    lost = True
                    log.warning("invalidation event ids jumped past more than %d gaps: every cache dropped", MAX_GAPS)
                self._last_id = event_id
            elif self._gaps.pop(event_id, None) is None:
                continue  # (cannot happen: only gaps are read below the last id)
            events.append((topic, key))
        for event_id in settled:
            self._gaps.pop(event_id, None)
        await self._watch(session, skipped)
        return events, lost

    async def _settled_gaps(self, session: AsyncSession, now: float) -> list[int]:
        """The gaps due for a check whose transactions have all ended (the others are checked again later)."""
        due = [event_id for event_id, gap in self._gaps.items() if gap.check_at <= now]
        if not due:
            return []
        oldest_running = await session.scalar(_OLDEST_RUNNING)
        settled = []
        for event_id in due:
            gap = self._gaps[event_id]
            if oldest_running >= gap.horizon:
                settled.append(event_id)
            else:
                gap.check_at = now + self._gap_check_s
        return settled

    async def _watch(self, session: AsyncSession, skipped: list[int]) -> None:
        """Remember ids a read skipped, with the transaction horizon that tells when they can no longer commit."""
        if not skipped:
            return
        # Asked after the read that skipped them, so their transactions already hold transaction ids below it: each
        # change writes its own row before its event (and an INSERT takes its transaction id as it takes its row id).
        horizon = await session.scalar(_NOT_YET_STARTED)
        check_at = time.monotonic() + self._gap_check_s
        for event_id in skipped:
            self._gaps[event_id] = _Gap(check_at, horizon)

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
