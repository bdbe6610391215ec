"""The deliverer: a background loop in every process that sends due webhook deliveries.

Woken at once when this process enqueues (a task ended here, a test event, a replay), and every poll interval
otherwise (retries falling due, work enqueued by other replicas or the command line). Replicas share the work
through the deliveries' leases (app/webhooks/repository.py `claim_due`). Failures back off like the task poller.
"""

from __future__ import annotations

import asyncio
import logging

from app.core import outage
from app.core.db.errors import describe, is_database_unavailable, redacted_traceback
from app.webhooks.service import BATCH, WebhookService

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


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
        self._interval_s = interval_s
        self._batch = batch
        self._max_backoff_s = max(interval_s, min(MAX_BACKOFF_S, 6 * interval_s))
        self._tracker = tracker or outage.tracker(outage.DATABASE)
        self.failed_rounds = 0

    def delay(self) -> float:
        if self.failed_rounds == 0:
            return self._interval_s
        return min(self._max_backoff_s, self._interval_s * 2.0 ** min(self.failed_rounds, 32))

    async def run_forever(self) -> None:
        while True:
            try:
                sent = await self._service.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # retried after the back-off (database restart, ...)
                self.failed_rounds += 1
                sent = 0
                if is_database_unavailable(e):
                    self._tracker.failed(describe(e), source="the webhook deliverer")
                else:
                    log.error("webhook delivery round failed; next in %.1f s\n%s", self.delay(), redacted_traceback(e))
                await asyncio.sleep(self.delay())
                continue
            self.failed_rounds = 0
            if sent >= self._batch:
                continue  # more may be due right now
            await self._service.wait_for_work(self._interval_s)
