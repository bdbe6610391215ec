"""Background refresh of open tasks that no caller is polling: they end and settle their quota by themselves.

Every replica may run it: the per-task refresh claim (`repositories.tasks.claim_refresh`) lets one replica ask
the upstream about a task per interval, however many are polling.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from app.tasks.service import TaskService

log = logging.getLogger(__name__)


class TaskPoller:
    def __init__(self, tasks: TaskService, interval_s: float, submit_deadline_s: float, batch: int = 100) -> None:
        self._tasks = tasks
        self._interval_s = interval_s
        self._submit_deadline = dt.timedelta(seconds=submit_deadline_s)
        self._batch = batch

    async def run_once(self) -> int:
        """One sweep; the number of tasks looked at."""
        interrupted = await self._tasks.fail_interrupted_submits(self._submit_deadline, self._batch)
        return interrupted + await self._tasks.refresh_stale(dt.timedelta(seconds=self._interval_s), self._batch)

    async def run_forever(self) -> None:
        while True:
            try:
                seen = await self.run_once()
                if seen:
                    log.debug("poller refreshed %d open tasks", seen)
            except asyncio.CancelledError:
                raise
            except Exception:  # a sweep that fails (database restart, ...) is retried at the next interval
                log.exception("task poller sweep failed")
            await asyncio.sleep(self._interval_s)
