"""Background refresh of open tasks that no caller is polling: they end and settle their quota by themselves.

Every replica may run it: the per-task refresh claim (`repositories.tasks.claim_refresh`) lets one replica ask
the upstream about a task per interval, however many are polling.

While sweeps fail, the poller backs off exponentially (the interval doubled per failed sweep, up to
`max_backoff_s`: 6 intervals, at most 30 s, never less than one interval) and is back to its interval after the
first sweep that works. A database outage is reported to the database's outage tracker, which logs its start and
its end once (app/core/outage.py), not once per sweep; any other failure is logged with its (redacted) traceback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from app.core import outage
from app.core.db.errors import describe, is_database_unavailable, redacted_traceback
from app.tasks.service import TaskService

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
MAX_BACKOFF_INTERVALS = 6


def max_backoff(interval_s: float) -> float:
    """The longest pause between failing sweeps: 6 intervals, capped at 30 s, never below one interval."""
    return max(interval_s, min(MAX_BACKOFF_S, MAX_BACKOFF_INTERVALS * interval_s))


class TaskPoller:
    def __init__(
        self,
        tasks: TaskService,
        interval_s: float,
        submit_deadline_s: float,
        batch: int = 100,
        *,
        max_backoff_s: float | None = None,
        tracker: outage.OutageTracker | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._tasks = tasks
        self._interval_s = interval_s
        self._submit_deadline = dt.timedelta(seconds=submit_deadline_s)
        self._batch = batch
        self._max_backoff_s = max_backoff(interval_s) if max_backoff_s is None else max_backoff_s
        self._tracker = tracker or outage.tracker(outage.DATABASE)
        self._sleep = sleep
        self.failed_sweeps = 0  # consecutive

    async def run_once(self) -> int:
        """One sweep; the number of tasks looked at."""
        interrupted = await self._tasks.fail_interrupted_submits(self._submit_deadline, self._batch)
        return interrupted + await self._tasks.refresh_stale(dt.timedelta(seconds=self._interval_s), self._batch)

    def delay(self) -> float:
        """The pause before the next sweep: the interval, doubled per consecutive failed sweep, capped."""
        if self.failed_sweeps == 0:
            return self._interval_s
        return min(self._max_backoff_s, self._interval_s * 2.0 ** min(self.failed_sweeps, 32))

    async def run_forever(self) -> None:
        while True:
            try:
                seen = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # retried after the back-off (database restart, ...)
                self.failed_sweeps += 1
                if is_database_unavailable(e):
                    self._tracker.failed(describe(e), source="the task poller")
                    log.debug("task poller sweep failed (%s); next in %.1f s", describe(e), self.delay())
                else:
                    log.error("task poller sweep failed; next in %.1f s\n%s", self.delay(), redacted_traceback(e))
            else:
                self.failed_sweeps = 0
                if seen:
                    log.debug("poller refreshed %d open tasks", seen)
            await self._sleep(self.delay())
