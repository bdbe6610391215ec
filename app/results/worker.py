"""The copier: a background loop in every process that copies due result images into the store and deletes the
ones past their retention (ResultService.run_once).

Woken at once when this process ends a task with images to keep, and every poll interval otherwise (retries falling
due, other replicas' tasks, retention ends). Replicas share the work through the rows' leases. A round that fails
(the database away) backs off as the reconciler does (app/core/background.py `Rounds`); the store away is found by a
probe, before anything is claimed, and its outage logged once.
"""

from __future__ import annotations

import asyncio
import logging

from app.core.background import Rounds
from app.results.service import ResultService

log = logging.getLogger(__name__)


class ResultCopier:
    def __init__(self, service: ResultService, interval_s: float) -> None:
        self._service = service
        self.rounds = Rounds("result copy round", source="the result copier", interval_s=interval_s, logger=log)

    async def run_forever(self) -> None:
        await self.rounds.run_forever(self._round, pause=self._service.wait_for_work, pause_after_failure=asyncio.sleep)

    async def _round(self) -> bool:
        await self._service.run_once()
        return False  # then wait for work, or the interval
