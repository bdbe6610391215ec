"""The deliverer: a background loop in every process that sends due webhook deliveries.

Woken at once when this process enqueues (a task ended here, a test event, a replay), and every poll interval
otherwise (retries falling due, work enqueued by other replicas or the command line). Replicas share the work
through the deliveries' leases (app/webhooks/repository.py `claim_due`). Failures back off like the task poller
(app/core/background.py `Rounds`).
"""

from __future__ import annotations

import asyncio
import logging

from app.core import outage
from app.core.background import Rounds
from app.webhooks.service import BATCH, WebhookService

log = logging.getLogger(__name__)


class WebhookDeliverer:
    def __init__(
        self,
        service: WebhookService,
        interval_s: float,
        *,
        batch: int = BATCH,
        tracker: outage.OutageTracker | None = None,
    ) -> None:
        self._service = service
        self._batch = batch
        self.rounds = Rounds(
            "webhook delivery round", source="the webhook deliverer", interval_s=interval_s, logger=log, tracker=tracker
        )

    async def run_forever(self) -> None:
        await self.rounds.run_forever(self._round, pause=self._service.wait_for_work, pause_after_failure=asyncio.sleep)

    async def _round(self) -> bool:
        sent = await self._service.deliver_due()
        return sent >= self._batch  # a full batch: more may be due right now
