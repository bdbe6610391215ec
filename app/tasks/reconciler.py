"""The reconciler: every gateway process runs one, so every task ends (and settles) whether or not anyone polls it.

Each sweep leases the open tasks that are due (TaskService.claim_due: `FOR UPDATE SKIP LOCKED`, so
replicas share the work without waiting for each other; a lease expires, so a process that dies mid-task leaves it
to the others) and does what each needs (TaskService.reconcile):

- `waiting` (the upstream could not take it): send it now, on any usable key, or wait more (backoff, Retry-After);
  past its queue deadline, fail and refund it;
- accepted upstream: ask the upstream with the task's pinned key; first look about 5 s after create, then every
  5-10 s with jitter (a caller's status call counts as a look); past the task deadline, a final look, then failed
  and refunded;
- `submitting` long after any create call could last (its process died mid-call): outcome unknown, kept and
  flagged, never resent nor silently refunded; at its deadline it fails with its reservation charged.

The upstream's query budget per key is kept by pacing: at most `query_rps` status calls per second per key from
this process. Work created by a request of this process (a task starting to wait) wakes the loop at once; another
replica's new work is found on the next tick (`interval_s`). A sweep that fails (database away) is retried with
backoff, and a database outage is logged once by its tracker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable

from app.core import outage
from app.core.background import Rounds
from app.core.background import max_backoff as max_backoff  # re-exported: the back-off's cap, where it was
from app.core.db.errors import is_database_unavailable, redacted_traceback
from app.models.task import Task
from app.tasks.service import TaskService

log = logging.getLogger(__name__)

LEASE = dt.timedelta(seconds=120)  # longer than one task's work (a create call with its timeouts included)


def process_name() -> str:
    """Who holds a lease: host, pid and a random tag (a restarted process is someone else)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(3)}"


class Reconciler:
    def __init__(
        self,
        tasks: TaskService,
        interval_s: float,
        batch: int = 50,
        *,
        concurrency: int = 10,
        max_backoff_s: float | None = None,
        tracker: outage.OutageTracker | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._tasks = tasks
        self._batch = batch
        self._concurrency = concurrency
        self._sleep = sleep
        self._owner = process_name()
        self._wake = asyncio.Event()
        self.rounds = Rounds(
            "task reconciler sweep",
            source="the task reconciler",
            interval_s=interval_s,
            logger=log,
            tracker=tracker,
            max_backoff_s=max_backoff_s,
        )

    @property
    def failed_sweeps(self) -> int:
        """Consecutive failed sweeps."""
        return self.rounds.failed

    def wake(self) -> None:
        """Look for due work now instead of at the next tick."""
        self._wake.set()

    async def run_once(self) -> int:
        """One sweep: lease the due tasks and reconcile each; the number of tasks handled."""
        await self._tasks.write_kept_answers()  # before any claim: a kept task must not look unanswered
        handled = 0
        gate = asyncio.Semaphore(self._concurrency)
        seen: set[str] = set()
        while True:
            claimed = await self._tasks.claim_due(self._owner, self._batch, LEASE)
            due = [task for task in claimed if task.id not in seen]
            ids = [task.id for task in due]
            if not ids:  # nothing due, or only tasks this sweep could not move on (they wait for the next one)
                if claimed:
                    await self._tasks.release_leases([task.id for task in claimed], self._owner)
                return handled
            seen.update(ids)

            async def one(task: Task) -> None:
                async with gate:
                    try:
                        await self._tasks.reconcile(task)
                    except Exception as e:  # one task's failure must not stop the others; its lease expires
                        if is_database_unavailable(e):
                            raise
                        log.error("reconciling task %s failed\n%s", task.id, redacted_traceback(e))

            try:
                await asyncio.gather(*(one(task) for task in due))
            finally:  # a failed one's lease is given back too: it is due again at its next look
                with contextlib.suppress(Exception):
                    await self._tasks.release_leases(ids, self._owner)
            handled += len(ids)  # and claim again: a claim takes a few tasks per tenant, fairly

    async def run_forever(self) -> None:
        await self.rounds.run_forever(self._sweep, pause=self._pause)  # after a failed sweep too: a wake cuts it short

    async def _sweep(self) -> bool:
        seen = await self.run_once()
        if seen:
            log.debug("reconciler handled %d tasks", seen)
        return False  # then the interval (or a wake)

    async def _pause(self, seconds: float) -> None:
        if self._sleep is not None:
            await self._sleep(seconds)
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
