"""The tasks feature as the lifespan builds it: the service and its background worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field

from app.core.background import cancel_and_wait
from app.core.db.engine import autocommit_engine
from app.core.db.errors import describe
from app.core.runtime import Kernel
from app.tasks.reconciler import Reconciler
from app.tasks.service import TaskService
from app.upstream.feature import Upstream

log = logging.getLogger(__name__)


@dataclass
class Tasks:
    service: TaskService
    worker: Reconciler | None
    _running: asyncio.Task[None] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start the reconciler (unless GATEWAY_POLL_INTERVAL_S is 0)."""
        if self.worker is not None and self._running is None:
            self._running = asyncio.create_task(self.worker.run_forever(), name="task-reconciler")

    async def stop(self) -> None:
        """Stop the background worker (a sweep in progress is cancelled: every step of it is idempotent), then write
        the upstream answers kept while the database was away, if it is back."""
        await cancel_and_wait(self._running)
        self._running = None
        if self.service.kept_answers:
            try:
                await self.service.write_kept_answers()
            except Exception as e:
                log.error(
                    "%d upstream answers not written at shutdown (%s): their tasks end as submit_outcome_unknown",
                    self.service.kept_answers,
                    describe(e),
                )


def build_tasks(kernel: Kernel, upstream: Upstream) -> Tasks:
    settings = kernel.settings
    service = TaskService(
        kernel.sessions,
        autocommit_engine(kernel.engine),
        upstream.adapter,
        upstream.pool_service,
        kernel.clock,
        dt.timedelta(seconds=settings.status_refresh_interval_s),
        quotas_enabled=settings.quotas_enabled,
        queue_deadline=dt.timedelta(seconds=settings.queue_deadline_s),
        task_deadline=dt.timedelta(seconds=settings.task_deadline_s),
        submit_deadline=dt.timedelta(seconds=settings.submit_deadline_s),
    )
    worker = None
    if settings.poll_interval_s > 0:
        worker = Reconciler(service, settings.poll_interval_s)
        service.on_waiting = worker.wake
    return Tasks(service=service, worker=worker)
