"""The pool of the organisation's upstream keys: which key sends a new task, and the key of an existing one.

The keys live in the database (encrypted, `upstream_keys`); each process holds a decrypted copy of every key with
its state, weight and cap, loaded at start and reloaded when an invalidation event names a key
(app/core/invalidation.py), so choosing a key costs no database read. What one replica learns about a key (a 429
cools it, a 401/403 disables it, repeated 5xx cool it briefly) it writes to the key's row with an invalidation event,
so every replica knows within the invalidator's bound; the statement that counts a task in flight on a key re-checks
its state and cap in the database, so a key cooled, drained or filled elsewhere is never used even before that.

This module is the pool's state and rules, in memory, without a database: which key takes a task, what a failed
call says about its key (`judge`), and the state a write leaves (`cooled`, `disabled`, ...). The writes themselves,
each in its transaction, are app/upstream/service.py's `PoolService`; their SQL is app/upstream/repository.py's.

States: `active`; `cooling` until `cooling_until` (then usable again, computed from the time, no write needed);
`disabled` (refused by the upstream: re-probed by `prober.KeyProber` and re-enabled when accepted again; or disabled
by an admin: stays so); `draining` (no new task; its open tasks are still polled with it); `retired` (no new task,
never probed; tasks still open on it are polled with it until they end, because only the key that created a task
can read it). Only `active` and cooled-down `cooling` keys take new tasks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum

from app.core.clock import Clock
from app.core.errors import (
    GatewayError,
    NoUpstreamKey,
    SecretKeyMismatch,
    UpstreamCredentialsRefused,
    UpstreamRejected,
)
from app.core.security import KeyMaterial
from app.models import UpstreamKey, UpstreamKeyStatus
from app.upstream import repository as repo
from app.upstream.base import UpstreamServerError, parse_retry_after

log = logging.getLogger(__name__)

TAKES_NEW = frozenset(repo.TAKES_NEW)
# `status_reason` of a key the upstream refused: the prober re-probes those, never a key an admin disabled.
REFUSED_REASON = "refused by the upstream"
ADMIN_DISABLED_REASON = "disabled by an admin"

_EPOCH = dt.datetime.fromtimestamp(0, dt.UTC)


@dataclass(frozen=True)
class PoolPolicy:
    """How the pool reacts to what the upstream says about a key."""

    error_threshold: int = 3  # consecutive 5xx answers that cool a key ...
    error_cooldown_s: float = 30.0  # ... for this long
    default_cooldown_s: float = 10.0  # a 429 without a readable Retry-After
    max_cooldown_s: float = 3600.0  # the longest a Retry-After may cool a key
    probe_interval_s: float = 60.0  # a refused key is re-probed this often (by one replica)
    full_hint_s: float = 1.0  # a key found full is tried last for this long (or until a task of it ends here)
    full_retry_after_s: int = 5  # Retry-After when every usable key is at its cap


@dataclass(frozen=True, slots=True)
class PoolKey:
    """One key as this process knows it; `secret` never appears in a repr (or a log line)."""

    id: str
    secret: str = field(repr=False)
    name: str = ""
    status: UpstreamKeyStatus = UpstreamKeyStatus.ACTIVE
    weight: int = 1
    max_in_flight: int | None = None
    cooling_until: dt.datetime | None = None
    consecutive_errors: int = 0
    status_reason: str | None = None

    def takes_new(self, now: dt.datetime) -> bool:
        return self.status in TAKES_NEW and (self.cooling_until is None or self.cooling_until <= now)

    def effective_status(self, now: dt.datetime) -> UpstreamKeyStatus:
        """`cooling` reads `active` once its cooldown has passed (the row keeps `cooling` until the next write)."""
        if self.status == UpstreamKeyStatus.COOLING and (self.cooling_until is None or self.cooling_until <= now):
            return UpstreamKeyStatus.ACTIVE
        return self.status

    @property
    def refused_by_upstream(self) -> bool:
        return self.status == UpstreamKeyStatus.DISABLED and (self.status_reason or "").startswith(REFUSED_REASON)


def effective_status(row: UpstreamKey, now: dt.datetime) -> UpstreamKeyStatus:
    if row.status == UpstreamKeyStatus.COOLING and (row.cooling_until is None or row.cooling_until <= now):
        return UpstreamKeyStatus.ACTIVE
    return UpstreamKeyStatus(row.status)


class Act(Enum):
    """What a failed call asks of its key's stored state."""

    NOTHING = "nothing"
    DISABLE = "disable"  # the upstream refused the key (401/403)
    COOL = "cool"  # rate limited (429): for `Verdict.seconds`
    COUNT_ERROR = "count_error"  # one more 5xx (cooled at the threshold)


@dataclass(frozen=True)
class Verdict:
    """What a failed call says about its key: `act` on its stored state, and whether the failure is the key's own
    (so the call may be retried with another key)."""

    act: Act
    own: bool = False
    reason: str = ""
    seconds: float | None = None  # COOL: the upstream's Retry-After, if readable


class UpstreamKeyPool:
    """Weighted choice over the keys that take new tasks (smooth weighted round-robin), held decrypted in memory."""

    def __init__(self, material: KeyMaterial, clock: Clock, policy: PoolPolicy | None = None) -> None:
        self._material = material
        self._clock = clock
        self.policy = policy or PoolPolicy()
        self._keys: dict[str, PoolKey] = {}
        self._current: dict[str, int] = {}  # smooth weighted round-robin state
        self._full_until: dict[str, dt.datetime] = {}  # keys found at their cap, tried last until then

    # --- the keys held -------------------------------------------------------------------------------------------
    def apply(self, rows: Sequence[UpstreamKey], key_ids: Collection[str] | None, *, strict: bool) -> None:
        """Hold these stored keys, decrypted: every key (`key_ids` None) or the named ones (a named key without a
        row is dropped). `strict` (at start): SecretKeyMismatch when a key in use cannot be decrypted."""
        loaded: dict[str, PoolKey] = {}
        for row in rows:
            try:
                secret = self._material.decrypt(row.secret_encrypted)
            except ValueError as e:
                if strict and row.status != UpstreamKeyStatus.RETIRED:
                    raise SecretKeyMismatch(
                        "Stored upstream keys cannot be decrypted with this GATEWAY_SECRET_KEY: it was changed; "
                        "restore it (or list the former one in GATEWAY_PREVIOUS_SECRET_KEYS)."
                    ) from e
                log.error("upstream key %s (%s) cannot be decrypted with the known secrets: unused", row.id, row.name)
                continue
            loaded[row.id] = PoolKey(
                id=row.id,
                secret=secret,
                name=row.name,
                status=UpstreamKeyStatus(row.status),
                weight=max(1, row.weight),
                max_in_flight=row.max_in_flight,
                cooling_until=row.cooling_until,
                consecutive_errors=row.consecutive_errors,
                status_reason=row.status_reason,
            )
        if key_ids is None:
            self._keys = loaded
            self._full_until.clear()
            return
        for key_id in key_ids:
            self._full_until.pop(key_id, None)
            if key_id in loaded:
                self._keys[key_id] = loaded[key_id]
            else:
                self._keys.pop(key_id, None)

    def set_keys(self, keys: Sequence[PoolKey]) -> None:
        """Replace the keys held (tests, and tools that run without a database)."""
        self._keys = {k.id: k for k in keys}
        self._full_until.clear()

    def snapshot(self) -> list[PoolKey]:
        """Every key this process holds, as it holds it now."""
        return list(self._keys.values())

    # --- choosing ------------------------------------------------------------------------------------------------
    def choose(self, exclude: Collection[str] = ()) -> PoolKey:
        """The key for a new task: among the healthy keys (active, or cooled down), those not known to be full
        first, by weight. NoUpstreamKey (503, with Retry-After) when there is none.

        A key with a few recent 5xx stays in the rotation (it is cooled at the threshold): avoiding it before
        that would never let a success reset its count."""
        now = self._clock()
        usable = [k for k in self._keys.values() if k.id not in exclude and k.takes_new(now)]
        if not usable:
            raise self.unavailable()
        roomy = [k for k in usable if self._full_until.get(k.id, _EPOCH) <= now] or usable
        return self._pick(roomy)

    def _pick(self, candidates: Sequence[PoolKey]) -> PoolKey:
        """Smooth weighted round-robin (as nginx): exact proportions, no bursts on one key, no randomness."""
        total = 0
        best: PoolKey | None = None
        best_weight = 0
        for key in candidates:
            weight = self._current.get(key.id, 0) + key.weight
            self._current[key.id] = weight
            total += key.weight
            if best is None or weight > best_weight:
                best, best_weight = key, weight
        assert best is not None
        self._current[best.id] = best_weight - total
        return best

    def get(self, key_id: str | None) -> PoolKey:
        """The key a task is pinned to, whatever its state (its status is read with the key that created it)."""
        key = self._keys.get(key_id or "")
        if key is None:
            raise NoUpstreamKey("The upstream key that created this task is no longer available")
        return key

    def retry_after_s(self) -> int:
        """When to try again: the soonest end of a cooldown; else (keys full) a few seconds; else a probe interval."""
        now = self._clock()
        ends = [
            k.cooling_until
            for k in self._keys.values()
            if k.status in TAKES_NEW and k.cooling_until is not None and k.cooling_until > now
        ]
        if ends:
            return max(1, math.ceil((min(ends) - now).total_seconds()))
        if any(k.takes_new(now) for k in self._keys.values()):
            return self.policy.full_retry_after_s
        return max(1, math.ceil(self.policy.probe_interval_s))

    def recovers_by_itself(self) -> bool:
        """Whether a key that takes no task now will by itself (it cools down, or a task on it ends), as opposed to
        none left that can (disabled, draining, retired, or no key at all: ops must act)."""
        return any(k.status in TAKES_NEW for k in self._keys.values())

    def unavailable(self) -> NoUpstreamKey:
        retry = self.retry_after_s()
        return NoUpstreamKey(
            f"No upstream key can take this task now; retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )

    def __len__(self) -> int:
        """Keys that take new tasks now or after a cooldown (what readiness asks for)."""
        return sum(1 for k in self._keys.values() if k.status in TAKES_NEW)

    # --- tasks in flight -------------------------------------------------------------------------------------------
    def mark_full(self, key_id: str) -> None:
        """The database refused a slot on the key: other keys first for a while (full_hint_s)."""
        self._full_until[key_id] = self._clock() + dt.timedelta(seconds=self.policy.full_hint_s)

    def slot_released(self, key_id: str) -> None:
        """A slot of the key was freed in the database (PoolService.release_slot, or app/tasks/ending.py): it may take
        a task."""
        self._full_until.pop(key_id, None)

    # --- what the upstream says about a key: the rules ---------------------------------------------------------------
    def judge(self, key: PoolKey, error: GatewayError, *, call: str = "create") -> Verdict:
        """What a failed call says about its key: a 401/403 disables it (on any call); a 429 on a create or upload
        cools it for its Retry-After; a 5xx on one counts against it; a status call's other failures say nothing
        (queries have a rate bucket of their own). `own`: the call may be retried with another key."""
        if isinstance(error, UpstreamCredentialsRefused):
            if self._keys.get(key.id, key).status not in TAKES_NEW:  # e.g. each poll of a task on a draining key
                log.warning("upstream key %s (%s), out of the rotation, was refused by the upstream", key.id, key.name)
                return Verdict(Act.NOTHING, own=True)
            return Verdict(Act.DISABLE, own=True, reason=f"{REFUSED_REASON} ({_status_in(error.message)})")
        if call == "status":
            return Verdict(Act.NOTHING)
        if isinstance(error, UpstreamRejected) and error.status_code == 429:
            retry = parse_retry_after(_header(error.headers, "retry-after"), self._clock())
            return Verdict(Act.COOL, own=True, reason="rate limited by the upstream (429)", seconds=retry)
        if isinstance(error, UpstreamServerError):
            return Verdict(Act.COUNT_ERROR)
        return Verdict(Act.NOTHING)

    def cooldown_s(self, seconds: float | None) -> float:
        """How long a key cools for the upstream's Retry-After (`seconds`; None: unreadable), within the policy."""
        policy = self.policy
        return policy.default_cooldown_s if seconds is None else min(max(seconds, 0.0), policy.max_cooldown_s)

    def cools_at(self, errors: int) -> bool:
        """Whether a key with this many consecutive 5xx is cooled (at the threshold, and on every error after it)."""
        return errors >= self.policy.error_threshold

    def serves_others(self, key: PoolKey) -> bool:
        """Whether the key's last counted answer was a success (no 5xx counted since): a task's 5xx on it is then
        the task's own, not the key's or the upstream's. Also whether a success has nothing to reset."""
        return self._keys.get(key.id, key).consecutive_errors == 0

    # --- the state a write left (applied at once, without waiting for its invalidation event) -----------------------
    def cooled(self, key: PoolKey, until: dt.datetime, seconds: float, reason: str) -> None:
        log.warning("upstream key %s (%s) cooling for %g s: %s", key.id, key.name, seconds, reason)
        self._update(
            key.id, status=UpstreamKeyStatus.COOLING, cooling_until=until, status_reason=reason, only_if_takes_new=True
        )

    def disabled(self, key: PoolKey, reason: str) -> None:
        log.error(
            "ALERT upstream key %s (%s) disabled: %s; re-probed every %g s and re-enabled when accepted again",
            key.id,
            key.name,
            reason,
            self.policy.probe_interval_s,
        )
        self._update(
            key.id, status=UpstreamKeyStatus.DISABLED, status_reason=reason, cooling_until=None, only_if_takes_new=True
        )

    def not_disabled(self, key: PoolKey) -> None:
        """The upstream refused a key that another replica or an admin took out of the rotation first."""
        log.warning("upstream key %s (%s), not in the rotation, was refused by the upstream", key.id, key.name)

    def errors_counted(self, key: PoolKey, errors: int) -> None:
        self._update(key.id, consecutive_errors=errors)

    def reenabled(self, key: PoolKey) -> None:
        log.warning("upstream key %s (%s) accepted by the upstream again: re-enabled", key.id, key.name)
        self._update(
            key.id, status=UpstreamKeyStatus.ACTIVE, status_reason=None, cooling_until=None, consecutive_errors=0
        )

    def _update(self, key_id: str, *, only_if_takes_new: bool = False, **changes: object) -> None:
        key = self._keys.get(key_id)
        if key is None or (only_if_takes_new and key.status not in TAKES_NEW):
            return
        self._keys[key_id] = dataclasses.replace(key, **changes)  # type: ignore[arg-type]


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _status_in(message: str) -> str:
    """The HTTP status named at the end of UpstreamCredentialsRefused's message, e.g. "401"."""
    tail = message.rstrip(")").rsplit("(", 1)[-1]
    return tail if tail.isdigit() else "401/403"
