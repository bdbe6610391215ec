"""The tasks feature as the lifespan builds it: the service and its background worker."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from dataclasses import dataclass, field

from app.runtime import Kernel
from app.tasks.service import TaskService
from app.tasks.worker import TaskPoller
from app.upstream.feature import Upstream


@dataclass
class Tasks:
    service: TaskService
    worker: TaskPoller | None
    _running: asyncio.Task[None] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start the background worker (if polling is on)."""
        if self.worker is not None and self._running is None:
            self._running = asyncio.create_task(self.worker.run_forever(), name="task-poller")

    async def stop(self) -> None:
        """Stop the background worker; a sweep in progress is cancelled (every step of it is idempotent)."""
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running
            self._running = None


def build_tasks(kernel: Kernel, upstream: Upstream) -> Tasks:
    settings = kernel.settings
    service = TaskService(
        kernel.sessions,
        upstream.adapter,
        upstream.pool,
        kernel.clock,
        dt.timedelta(seconds=settings.status_refresh_interval_s),
        quotas_enabled=settings.quotas_enabled,
    )
    worker = None
    if settings.poll_interval_s > 0:
        worker = TaskPoller(service, settings.poll_interval_s, settings.submit_deadline_s)
    return Tasks(service=service, worker=worker)
