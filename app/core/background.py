"""Background loops: their rounds (a pause between them, a back-off while they fail), waking one when work is
enqueued, and stopping one without losing the stopper's own cancellation.

The loops over leased database rows (the task reconciler, the result copier, the webhook deliverer) share `Rounds`;
what is due, how it is claimed and worked, and each row's own retry policy stay in their features.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import outage
from app.core.db.errors import describe, is_database_unavailable, redacted_traceback

MAX_BACKOFF_S = 30.0
MAX_BACKOFF_INTERVALS = 6


def max_backoff(interval_s: float) -> float:
    """The longest pause between failing rounds: 6 intervals, capped at 30 s, never below one interval."""
    return max(interval_s, min(MAX_BACKOFF_S, MAX_BACKOFF_INTERVALS * interval_s))


class Rounds:
    """A background loop's rounds, forever: a round, then `pause(interval_s)` unless the round answers True (more is
    due right now). A round that fails is retried after a back-off, the interval doubled per consecutive failed round
    (capped at `max_backoff_s`): the database away is reported to its outage tracker (one line per outage) and logged
    at DEBUG, any other failure logged at ERROR with its traceback, as "<what> failed; next in <delay> s"."""

    def __init__(
        self,
        what: str,
        *,
        source: str,
        interval_s: float,
        logger: logging.Logger,
        tracker: outage.OutageTracker | None = None,
        max_backoff_s: float | None = None,
    ) -> None:
        self.what = what
        self.source = source
        self.interval_s = interval_s
        self._log = logger
        self._tracker = tracker or outage.tracker(outage.DATABASE)
        self._max_backoff_s = max_backoff(interval_s) if max_backoff_s is None else max_backoff_s
        self.failed = 0  # consecutive

    def delay(self) -> float:
        """The pause before the next round: the interval, doubled per consecutive failed round, capped."""
        if self.failed == 0:
            return self.interval_s
        return min(self._max_backoff_s, self.interval_s * 2.0 ** min(self.failed, 32))

    async def run_forever(
        self,
        round_: Callable[[], Awaitable[bool]],
        *,
        pause: Callable[[float], Awaitable[None]],
        pause_after_failure: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """Run `round_` until cancelled; after a failed round, `pause_after_failure` (by default `pause`) waits."""
        while True:
            try:
                again = await round_()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # retried after the back-off (database restart, ...)
                self.failed += 1
                if is_database_unavailable(e):
                    self._tracker.failed(describe(e), source=self.source)
                    self._log.debug("%s failed (%s); next in %.1f s", self.what, describe(e), self.delay())
                else:
                    self._log.error("%s failed; next in %.1f s\n%s", self.what, self.delay(), redacted_traceback(e))
                await (pause_after_failure or pause)(self.delay())
                continue
            self.failed = 0
            if not again:
                await pause(self.delay())


class Wakeup:
    """Work for this process's loop: `set` when some is enqueued, `wait`ed for between its rounds (a wake during a
    round is kept for the next pause). `after_commit` sets it once the session's transaction has committed (before
    that the loop would find nothing), registered once per session under `name` in `session.info`."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> None:
        """Until `set` (or at most `timeout_s`)."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            self._event.clear()

    def after_commit(self, session: AsyncSession) -> None:
        if session.info.get(self._name):
            return
        session.info[self._name] = True

        def committed(_: Any) -> None:
            session.info.pop(self._name, None)
            self.set()

        event.listen(session.sync_session, "after_commit", committed, once=True)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has ended.

    The task's own CancelledError is expected and absorbed; the caller's is not: a stop that is itself cancelled
    (a shutdown cut short, a test's loop closing) ends at once instead of carrying on as if nothing happened.
    """
    if task is None or task.done():
        if task is not None and not task.cancelled():
            task.exception()  # retrieved: an ended loop's error was logged by the loop itself
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
