"""The copier: a background loop in every process that copies due result images into the store and deletes the
ones past their retention (ResultService.run_once).

Woken at once when this process ends a task with images to keep, and every poll interval otherwise (retries falling
due, other replicas' tasks, retention ends). Replicas share the work through the rows' leases. A round that fails
(the database away) backs off as the reconciler does; the store away is found by a probe, before anything is
claimed, and its outage logged once.
"""

from __future__ import annotations

import asyncio
import logging

from app.core import outage
from app.core.db.errors import describe, is_database_unavailable, redacted_traceback
from app.results.service import ResultService

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


class ResultCopier:
    def __init__(self, service: ResultService, interval_s: float) -> None:
        self._service = service
        self._interval_s = interval_s
        self._max_backoff_s = max(interval_s, min(MAX_BACKOFF_S, 6 * interval_s))
        self._tracker = outage.tracker(outage.DATABASE)
        self.failed_rounds = 0

    def delay(self) -> float:
        if self.failed_rounds == 0:
            return self._interval_s
        return min(self._max_backoff_s, self._interval_s * 2.0 ** min(self.failed_rounds, 32))

    async def run_forever(self) -> None:
        while True:
            try:
                await self._service.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.failed_rounds += 1
                if is_database_unavailable(e):
                    self._tracker.failed(describe(e), source="the result copier")
                else:
                    log.error("result copy round failed; next in %.1f s\n%s", self.delay(), redacted_traceback(e))
                await asyncio.sleep(self.delay())
                continue
            self.failed_rounds = 0
            await self._service.wait_for_work(self._interval_s)
