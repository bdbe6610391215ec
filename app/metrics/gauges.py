"""The gauges: refreshed when this process answers a scrape, and every few seconds by each worker of
`serve --workers N` (a scrape reads every worker's last values from the multiprocess directory), where each worker
also folds the HTTP answers it counted (app/core/metrics.observe_http) into those files every FOLD_S."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from app.core import metrics
from app.core.background import cancel_and_wait
from app.core.config import Settings
from app.core.runtime import Kernel
from app.models import UpstreamKeyStatus
from app.results.service import ResultService
from app.tasks.service import TaskService
from app.upstream.pool import UpstreamKeyPool

log = logging.getLogger(__name__)

MULTIPROCESS_REFRESH_S = 5.0


class Gauges:
    def __init__(
        self, kernel: Kernel, pool: UpstreamKeyPool, tasks: TaskService, *, results: ResultService | None = None
    ) -> None:
        """Each gauge is read where it is kept: the keys from the pool in memory, the waiting tasks from the tasks'
        service, the stored results' bytes from theirs, the connections in use from the engine's pool."""
        self.settings: Settings = kernel.settings
        self._kernel = kernel
        self._pool = pool
        self._tasks = tasks
        self._results = results
        self._loop: asyncio.Task[None] | None = None
        self._fold: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        now = self._kernel.clock()
        states = Counter(key.effective_status(now) for key in self._pool.snapshot())
        for state in UpstreamKeyStatus:
            metrics.UPSTREAM_KEYS.labels(state).set(states.get(state, 0))
        checked_out = getattr(self._kernel.engine.pool, "checkedout", None)
        metrics.DB_POOL_IN_USE.set(checked_out() if callable(checked_out) else 0)
        try:
            metrics.TASKS_WAITING.set(await self._tasks.count_waiting())
            if self._results is not None and self._results.enabled:
                metrics.result_store_bytes(await self._results.bytes_by_tenant())
        except Exception as e:  # a scrape still answers, with the last count, when the database is away
            log.debug("could not count waiting tasks: %s", type(e).__name__)

    def start(self) -> None:
        """With workers only: a single process folds and refreshes when it answers a scrape (render, refresh)."""
        if metrics.multiprocess_dir() is None:
            return
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="metrics-gauges")
        if self._fold is None:  # the HTTP answers this worker counted, into the shared files every FOLD_S
            self._fold = asyncio.create_task(metrics.fold_every(), name="metrics-fold")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(MULTIPROCESS_REFRESH_S)
            with contextlib.suppress(Exception):
                await self.refresh()

    async def stop(self) -> None:
        await cancel_and_wait(self._loop)
        await cancel_and_wait(self._fold)
        self._loop = self._fold = None
        metrics.process_exiting()
