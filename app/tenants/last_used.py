"""`last_used_at` without a database write per request: uses are kept in memory and written in batches.

Each authenticated request notes (key id -> time) in a dict; a background task writes the batch every
`interval_s` seconds with one UPDATE (executemany), and `stop()` writes what is left. A process that dies loses at
most the last interval's uses (the column says "used at or after", never more than `interval_s` stale otherwise).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.background import cancel_and_wait
from app.tenants import repository as repo

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0


class LastUsedRecorder:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self._sessions = sessions
        self._interval_s = interval_s
        self._pending: dict[str, dt.datetime] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def note(self, key_id: str, at: dt.datetime) -> None:
        """Remember a use (no I/O); starts the background writer on first use if nobody started it."""
        previous = self._pending.get(key_id)
        if previous is None or at > previous:
            self._pending[key_id] = at
        if self._task is None and not self._stopped:
            self.start()

    def pending(self, key_id: str) -> dt.datetime | None:
        """The last use noted here and not written yet."""
        return self._pending.get(key_id)

    async def flush(self) -> int:
        """Write the uses noted so far (one statement); the number of keys written."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        try:
            async with self._sessions.begin() as session:
                await repo.set_last_used(session, batch)
        except BaseException:
            for key_id, at in batch.items():  # keep them for the next attempt (a later use wins)
                current = self._pending.get(key_id)
                if current is None or at > current:
                    self._pending[key_id] = at
            raise
        return len(batch)

    def start(self) -> None:
        if self._task is None:
            self._stopped = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tenant-key-last-used")

    async def stop(self) -> None:
        """Stop the writer and write what is left (a failure is logged: the uses are only a hint)."""
        self._stopped = True
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self.flush()
        except Exception as e:
            log.warning("could not write the last use of %d tenant keys: %s", len(self._pending), type(e).__name__)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database is away: try again next time
                log.debug("last-use write failed: %s", type(e).__name__)
