"""The pool of the organisation's upstream keys: which key sends a new task, and the key of an existing one.

The keys live in the database (encrypted, `upstream_keys`); each process holds a decrypted copy of every key with
its state, weight and cap, loaded at start and reloaded when an invalidation event names a key
(app/core/invalidation.py), so choosing a key costs no database read. What one replica learns about a key (a 429
cools it, a 401/403 disables it, repeated 5xx cool it briefly) it writes to the key's row with an invalidation event,
so every replica knows within the invalidator's bound; the statement that counts a task in flight on a key re-checks
its state and cap in the database, so a key cooled, drained or filled elsewhere is never used even before that.

States: `active`; `cooling` until `cooling_until` (then usable again, computed from the time, no write needed);
`disabled` (refused by the upstream: re-probed by `prober.KeyProber` and re-enabled when accepted again; or disabled
by an admin: stays so); `draining` (no new task; its open tasks are still polled with it); `retired` (no new task,
never probed; tasks still open on it are polled with it until they end, because only the key that created a task
can read it). Only `active` and cooled-down `cooling` keys take new tasks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import outage
from app.core.background import cancel_and_wait
from app.core.clock import Clock
from app.core.db.errors import describe, is_database_unavailable, redacted_traceback
from app.core.errors import (
    GatewayError,
    NoUpstreamKey,
    SecretKeyMismatch,
    UpstreamCredentialsRefused,
    UpstreamRejected,
)
from app.core.ids import new_id
from app.core.invalidation import ALL, Invalidator, record
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


class UpstreamKeyPool:
    """Weighted choice over the keys that take new tasks (smooth weighted round-robin), held decrypted in memory."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        material: KeyMaterial,
        clock: Clock,
        policy: PoolPolicy | None = None,
    ) -> None:
        self._sessions = sessions
        self._material = material
        self._clock = clock
        self.policy = policy or PoolPolicy()
        self._keys: dict[str, PoolKey] = {}
        self._current: dict[str, int] = {}  # smooth weighted round-robin state
        self._full_until: dict[str, dt.datetime] = {}  # keys found at their cap, tried last until then
        self._pending: set[str] = set()
        self._pending_all = False
        self._reloader: asyncio.Task[None] | None = None

    # --- loading -------------------------------------------------------------------------------------------------
    async def load(self, configured: Iterable[str]) -> None:
        """Add configured keys to the stored pool (once each, whichever secret made the stored fingerprint), then
        load every key. SettingsError when a key in use cannot be decrypted with the configured secrets."""
        now = self._clock()
        async with self._sessions.begin() as session:
            for index, secret in enumerate(configured):
                if await repo.find_by_fingerprints(session, self._material.fingerprints(secret)) is not None:
                    continue
                key_id = new_id("upk_")
                name = f"configured-{index + 1}"
                added = await repo.insert_if_new(
                    session,
                    {
                        "id": key_id,
                        "name": name,
                        "fingerprint": self._material.fingerprint(secret),
                        "secret_encrypted": self._material.encrypt(secret),
                        "enc_key_id": self._material.key_id,
                        "status": UpstreamKeyStatus.ACTIVE,
                        "weight": 1,
                        "in_flight": 0,
                        "consecutive_errors": 0,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
                if added:
                    await record(session, "upstream_key", key_id, now=now)
                    log.info("upstream key %s (%s) added to the pool from GATEWAY_UPSTREAM_KEYS", key_id, name)
            rows = await repo.list_all(session)
            self._apply(rows, None, strict=True)

    def subscribe(self, invalidator: Invalidator) -> None:
        """Reload a key whenever an invalidation event names it (every key on `""`)."""
        invalidator.subscribe("upstream_key", self.invalidate)

    def invalidate(self, key_id: str) -> None:
        """An invalidation callback: reload `key_id` (every key when "") in the background, coalescing bursts."""
        if key_id == ALL:
            self._pending_all = True
        else:
            self._pending.add(key_id)
        if self._reloader is None or self._reloader.done():
            self._reloader = asyncio.get_running_loop().create_task(self._reload_pending(), name="upstream-keys-reload")

    async def reload(self, key_ids: Collection[str] | None = None) -> None:
        """Read the given keys (None: all of them) from the database into memory."""
        async with self._sessions() as session:
            rows = await (repo.list_all(session) if key_ids is None else repo.get_many(session, key_ids))
        self._apply(rows, key_ids, strict=False)

    async def aclose(self) -> None:
        await cancel_and_wait(self._reloader)
        self._reloader = None

    def set_keys(self, keys: Sequence[PoolKey]) -> None:
        """Replace the keys held (tests, and tools that run without a database)."""
        self._keys = {k.id: k for k in keys}
        self._full_until.clear()

    def snapshot(self) -> list[PoolKey]:
        """Every key this process holds, as it holds it now."""
        return list(self._keys.values())

    async def _reload_pending(self) -> None:
        while self._pending_all or self._pending:
            everything, ids = self._pending_all, self._pending
            self._pending_all, self._pending = False, set()
            try:
                await self.reload(None if everything else ids)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # kept for the next event (after an outage the invalidator says "everything")
                self._pending_all = self._pending_all or everything
                self._pending |= ids
                if is_database_unavailable(e):
                    outage.tracker(outage.DATABASE).failed(describe(e), source="the upstream key pool")
                    log.debug("upstream key reload failed (%s)", describe(e))
                else:
                    log.error("upstream key reload failed\n%s", redacted_traceback(e))
                return

    def _apply(self, rows: Sequence[UpstreamKey], key_ids: Collection[str] | None, *, strict: bool) -> None:
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

    # --- tasks in flight (in the caller's transaction) -----------------------------------------------------------
    async def take_slot(self, session: AsyncSession, key: PoolKey, exclude: Collection[str] = ()) -> PoolKey:
        """Count a new task in flight on `key`, or on the next choice when the database refuses it (full, or
        cooled/drained by another replica). One conditional UPDATE per key tried; NoUpstreamKey when none fits."""
        tried = set(exclude)
        while True:
            now = self._clock()
            if await repo.take_slot(session, key.id, now):
                return key
            tried.add(key.id)
            self.mark_full(key.id)
            key = self.choose(exclude=tried)

    def mark_full(self, key_id: str) -> None:
        """The database refused a slot on the key: other keys first for a while (full_hint_s)."""
        self._full_until[key_id] = self._clock() + dt.timedelta(seconds=self.policy.full_hint_s)

    async def release_slot(self, session: AsyncSession, key_id: str) -> None:
        """One task of the key ended (or was refused): in the transaction that records it."""
        await repo.release_slot(session, key_id)
        self.slot_released(key_id)

    def slot_released(self, key_id: str) -> None:
        """A slot of the key was freed in the database (by release_slot, or app/tasks/ending.py): it may take a task."""
        self._full_until.pop(key_id, None)

    # --- what the upstream says about a key (each in a transaction of its own) -------------------------------------
    async def report_failure(self, key: PoolKey, error: GatewayError, *, call: str = "create") -> bool:
        """Record what a failed call says about its key. True when the failure is the key's own (401/403, or a 429
        on a create or upload), so the call may be retried with another key."""
        if isinstance(error, UpstreamCredentialsRefused):
            await self.disable(key, f"{REFUSED_REASON} ({_status_in(error.message)})")
            return True
        if call == "status":  # queries have a rate bucket of their own; a failed poll changes nothing else
            return False
        if isinstance(error, UpstreamRejected) and error.status_code == 429:
            retry = parse_retry_after(_header(error.headers, "retry-after"), self._clock())
            await self.cool(key, retry, "rate limited by the upstream (429)")
            return True
        if isinstance(error, UpstreamServerError):
            await self.count_server_error(key)
        return False

    def serves_others(self, key: PoolKey) -> bool:
        """Whether the key's last counted answer was a success (no 5xx counted since): a task's 5xx on it is then
        the task's own, not the key's or the upstream's."""
        return self._keys.get(key.id, key).consecutive_errors == 0

    async def report_success(self, key: PoolKey) -> None:
        """A call worked: reset the key's error count, with a write only when it was not zero."""
        if self._keys.get(key.id, key).consecutive_errors == 0:
            return
        now = self._clock()
        async with self._sessions.begin() as session:
            if await repo.reset_errors(session, key.id):
                await record(session, "upstream_key", key.id, now=now)
        self._update(key.id, consecutive_errors=0)

    async def cool(self, key: PoolKey, seconds: float | None, reason: str) -> None:
        """Cool the key for every replica for `seconds` (the upstream's Retry-After)."""
        policy = self.policy
        seconds = policy.default_cooldown_s if seconds is None else min(max(seconds, 0.0), policy.max_cooldown_s)
        now = self._clock()
        until = now + dt.timedelta(seconds=seconds)
        async with self._sessions.begin() as session:
            changed = await repo.cool(session, key.id, until, reason, now)
            if changed:
                await record(session, "upstream_key", key.id, now=now)
        if changed:
            log.warning("upstream key %s (%s) cooling for %g s: %s", key.id, key.name, seconds, reason)
            self._update(
                key.id,
                status=UpstreamKeyStatus.COOLING,
                cooling_until=until,
                status_reason=reason,
                only_if_takes_new=True,
            )

    async def disable(self, key: PoolKey, reason: str) -> None:
        """The upstream refused the key: out of the rotation on every replica, re-probed until accepted again."""
        if self._keys.get(key.id, key).status not in TAKES_NEW:  # e.g. each poll of a task on a draining key
            log.warning("upstream key %s (%s), out of the rotation, was refused by the upstream", key.id, key.name)
            return
        now = self._clock()
        async with self._sessions.begin() as session:
            changed = await repo.disable(session, key.id, reason, now)
            if changed:
                await record(session, "upstream_key", key.id, now=now)
        if changed:
            log.error(
                "ALERT upstream key %s (%s) disabled: %s; re-probed every %g s and re-enabled when accepted again",
                key.id,
                key.name,
                reason,
                self.policy.probe_interval_s,
            )
            self._update(
                key.id,
                status=UpstreamKeyStatus.DISABLED,
                status_reason=reason,
                cooling_until=None,
                only_if_takes_new=True,
            )
        else:
            log.warning("upstream key %s (%s), not in the rotation, was refused by the upstream", key.id, key.name)

    async def count_server_error(self, key: PoolKey) -> None:
        """One more 5xx on the key; at the threshold (and on every error after it) a short cooldown."""
        now = self._clock()
        policy = self.policy
        until = now + dt.timedelta(seconds=policy.error_cooldown_s)
        reason = f"{policy.error_threshold} consecutive upstream errors (5xx)"
        async with self._sessions.begin() as session:
            count = await repo.count_error(session, key.id)
            if count is None:
                return
            cooled = count >= policy.error_threshold and await repo.cool(session, key.id, until, reason, now)
            await record(session, "upstream_key", key.id, now=now)
        self._update(key.id, consecutive_errors=count)
        if cooled:
            log.warning("upstream key %s (%s) cooling for %g s: %s", key.id, key.name, policy.error_cooldown_s, reason)
            self._update(
                key.id,
                status=UpstreamKeyStatus.COOLING,
                cooling_until=until,
                status_reason=reason,
                only_if_takes_new=True,
            )

    async def claim_probe(self, key_id: str) -> bool:
        """Whether this replica probes the refused key now (one replica per probe interval)."""
        interval = dt.timedelta(seconds=self.policy.probe_interval_s)
        async with self._sessions.begin() as session:
            return await repo.claim_probe(session, key_id, self._clock(), interval, REFUSED_REASON)

    async def reenable(self, key: PoolKey) -> bool:
        """The upstream accepts a key it had refused: back in the rotation on every replica."""
        now = self._clock()
        async with self._sessions.begin() as session:
            changed = await repo.reenable(session, key.id, REFUSED_REASON, now)
            if changed:
                await record(session, "upstream_key", key.id, now=now)
        if changed:
            log.warning("upstream key %s (%s) accepted by the upstream again: re-enabled", key.id, key.name)
            self._update(
                key.id, status=UpstreamKeyStatus.ACTIVE, status_reason=None, cooling_until=None, consecutive_errors=0
            )
        return changed

    def _update(self, key_id: str, *, only_if_takes_new: bool = False, **changes: object) -> None:
        """Apply a change this process just wrote, without waiting for its invalidation event."""
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
