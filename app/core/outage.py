"""Outage trackers: whether a dependency (the database, Redis) is down, and the two log lines of each outage.

Everything that notices a dependency failing (the API's exception handler, the task poller, the Redis rate-window
store) reports to the dependency's tracker, and whatever notices it working again reports that too. The tracker
logs one WARNING when an outage starts and one INFO when it ends, however many requests fail in between, so a
database restart costs two log lines instead of a traceback per request.

Trackers are per process and per dependency name (`tracker("database")`), so the parts of the app that report to
the same dependency need no wiring between them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

DATABASE = "database"
REDIS = "redis"
RESULT_STORE = "result store"

_CONSEQUENCES = {
    DATABASE: "requests answer 503 database_unavailable and the task poller backs off until it is back",
    REDIS: "rate limits are not enforced (requests are let through) until it is back",
    RESULT_STORE: "tasks complete as before with the upstream's links; copies wait and are retried until it is back",
}
_MAX_REASON_CHARS = 300


class OutageTracker:
    """The state of one dependency; `failed()` and `recovered()` log only on a transition."""

    def __init__(
        self,
        name: str,
        *,
        consequence: str = "",
        logger: logging.Logger = log,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.consequence = consequence
        self._log = logger
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._failures = 0
        self._reason = ""
        self._latest = ""

    @property
    def is_down(self) -> bool:
        return self._since is not None

    @property
    def since(self) -> float | None:
        """When (on the tracker's monotonic clock) the current outage started; None when up."""
        return self._since

    def now(self) -> float:
        """The tracker's clock (the scale of `since`)."""
        return self._clock()

    @property
    def failures(self) -> int:
        """Failures reported during the current outage (0 when up)."""
        return self._failures

    @property
    def reason(self) -> str:
        """What the first failure of the current outage was ("" when up)."""
        return self._reason

    @property
    def latest_reason(self) -> str:
        """What the latest failure of the current outage was ("" when up): the cause can change during one outage
        (a connection cut first, then the database missing when reconnecting)."""
        return self._latest

    def failed(self, reason: BaseException | str, *, source: str = "") -> bool:
        """Report one failure; True (and one WARNING logged) when it starts an outage."""
        with self._lock:
            self._failures += 1
            self._latest = _one_line(reason)
            if self._since is not None:
                return False
            self._since = self._clock()
            self._failures = 1
            self._reason = _one_line(reason)
        seen_by = f" (first seen by {source})" if source else ""
        consequence = f"; {self.consequence}" if self.consequence else ""
        self._log.warning("%s unavailable: %s%s%s", self.name, self._reason, seen_by, consequence)
        return True

    def recovered(self) -> bool:
        """Report one success; True (and one INFO logged) when it ends an outage."""
        if self._since is None:  # the common case, without the lock
            return False
        with self._lock:
            if self._since is None:
                return False
            lasted = self._clock() - self._since
            failures = self._failures
            self._since = None
            self._failures = 0
            self._reason = self._latest = ""
        self._log.info("%s available again after %.1f s (%d failed operations meanwhile)", self.name, lasted, failures)
        return True

    def operation_started(self) -> float | None:
        """A stamp for an operation starting now while an outage is on, for `operation_succeeded`; None when up
        (nothing to prove, nothing to do per operation)."""
        return self._clock() if self._since is not None else None

    def operation_succeeded(self, started: float | None) -> bool:
        """The operation stamped `started` succeeded: it ends the outage if it started after the outage began. One
        sent before the outage was noticed and answered just in time proves nothing."""
        if started is None:
            return False
        since = self._since
        return since is not None and started >= since and self.recovered()

    def reset(self) -> None:
        """Forget the current outage without logging (tests)."""
        with self._lock:
            self._since = None
            self._failures = 0
            self._reason = self._latest = ""


def _one_line(reason: BaseException | str) -> str:
    if isinstance(reason, BaseException):
        message = str(reason).strip().splitlines()
        text = f"{type(reason).__name__}: {message[0]}" if message else type(reason).__name__
    else:
        text = reason.strip().splitlines()[0] if reason.strip() else "unknown"
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


_trackers: dict[str, OutageTracker] = {}
_registry_lock = threading.Lock()


def tracker(name: str) -> OutageTracker:
    """The process's tracker of dependency `name` (created on first use)."""
    found = _trackers.get(name)
    if found is not None:
        return found
    with _registry_lock:
        return _trackers.setdefault(name, OutageTracker(name, consequence=_CONSEQUENCES.get(name, "")))
