"""The upstream key pool's services, each owning its transactions (the SQL is app/upstream/repository.py's, the state
and rules in memory app/upstream/pool.py's):

- `PoolService`: the pool as the gateway uses it: loading the keys (and reloading one on an invalidation event),
  a task's slot on a key, and what the upstream's answers say about a key (cooled, disabled, re-enabled), written to
  the key's row with an invalidation event so every replica learns it.
- `UpstreamKeyService`: ops rules: add, list, change, drain, retire, re-encrypt. Every change is one audited action
  (`AuditService.action`): the key's row, an invalidation event (every replica reloads the key within the
  invalidator's bound) and the audit event in one transaction; a refusal audited on its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.service import AuditedAction, AuditService
from app.core import outage
from app.core.background import cancel_and_wait
from app.core.clock import Clock
from app.core.db.errors import describe, is_database_unavailable, redacted_traceback
from app.core.errors import Conflict, GatewayError, NotFound
from app.core.ids import new_id
from app.core.invalidation import ALL, Invalidator, record
from app.core.pagination import DEFAULT_PAGE
from app.core.security import KeyMaterial
from app.models import UpstreamKey, UpstreamKeyStatus
from app.tenants.service import keys_pending_rekey
from app.upstream import repository as repo
from app.upstream.pool import ADMIN_DISABLED_REASON, REFUSED_REASON, Act, PoolKey, UpstreamKeyPool
from app.upstream.schemas import (
    KEY_CURSOR,
    KEY_ID,
    RekeyReport,
    UpstreamKeyCreate,
    UpstreamKeyList,
    UpstreamKeyOut,
    UpstreamKeyUpdate,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
TARGET = "upstream_key"


class PoolService:
    """The pool's writes and loads, each in a transaction of its own (or, for a slot, in the caller's); `pool`: the
    state they keep in memory, which choosing a key reads without a database round trip."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], material: KeyMaterial, clock: Clock, pool: UpstreamKeyPool
    ) -> None:
        self._sessions = sessions
        self._material = material
        self._clock = clock
        self.pool = pool
        self._pending: set[str] = set()
        self._pending_all = False
        self._reloader: asyncio.Task[None] | None = None

    # --- loading -------------------------------------------------------------------------------------------------
    async def load(self, configured: Iterable[str]) -> None:
        """Add configured keys to the stored pool (once each, whichever secret made the stored fingerprint), then
        load every key. SecretKeyMismatch when a key in use cannot be decrypted with the configured secrets."""
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
            self.pool.apply(rows, None, strict=True)

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
        self.pool.apply(rows, key_ids, strict=False)

    async def aclose(self) -> None:
        await cancel_and_wait(self._reloader)
        self._reloader = None

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

    # --- tasks in flight (in the caller's transaction) -----------------------------------------------------------
    async def take_slot(self, session: AsyncSession, key: PoolKey, exclude: Collection[str] = ()) -> PoolKey:
        """Count a new task in flight on `key`, or on the next choice when the database refuses it (full, or
        cooled/drained by another replica). One conditional UPDATE per key tried; NoUpstreamKey when none fits."""
        tried = set(exclude)
        while True:
            if await repo.take_slot(session, key.id, self._clock()):
                return key
            tried.add(key.id)
            self.pool.mark_full(key.id)
            key = self.pool.choose(exclude=tried)

    async def release_slot(self, session: AsyncSession, key_id: str) -> None:
        """One task of the key ended (or was refused): in the transaction that records it."""
        await repo.release_slot(session, key_id)
        self.pool.slot_released(key_id)

    # --- what the upstream says about a key (each in a transaction of its own) -------------------------------------
    async def report_failure(self, key: PoolKey, error: GatewayError, *, call: str = "create") -> bool:
        """Record what a failed call says about its key (UpstreamKeyPool.judge). True when the failure is the key's
        own (401/403, or a 429 on a create or upload), so the call may be retried with another key."""
        verdict = self.pool.judge(key, error, call=call)
        if verdict.act == Act.DISABLE:
            await self._disable(key, verdict.reason)
        elif verdict.act == Act.COOL:
            await self.cool(key, verdict.seconds, verdict.reason)
        elif verdict.act == Act.COUNT_ERROR:
            await self._count_server_error(key)
        return verdict.own

    async def report_success(self, key: PoolKey) -> None:
        """A call worked: reset the key's error count, with a write only when it was not zero."""
        if self.pool.serves_others(key):
            return
        now = self._clock()
        async with self._sessions.begin() as session:
            if await repo.reset_errors(session, key.id):
                await record(session, "upstream_key", key.id, now=now)
        self.pool.errors_counted(key, 0)

    async def cool(self, key: PoolKey, seconds: float | None, reason: str) -> None:
        """Cool the key for every replica for `seconds` (the upstream's Retry-After; None: unreadable)."""
        seconds = self.pool.cooldown_s(seconds)
        now = self._clock()
        until = now + dt.timedelta(seconds=seconds)
        async with self._sessions.begin() as session:
            changed = await repo.cool(session, key.id, until, reason, now)
            if changed:
                await record(session, "upstream_key", key.id, now=now)
        if changed:
            self.pool.cooled(key, until, seconds, reason)

    async def _disable(self, key: PoolKey, reason: str) -> None:
        """The upstream refused the key: out of the rotation on every replica, re-probed until accepted again."""
        now = self._clock()
        async with self._sessions.begin() as session:
            changed = await repo.disable(session, key.id, reason, now)
            if changed:
                await record(session, "upstream_key", key.id, now=now)
        if changed:
            self.pool.disabled(key, reason)
        else:
            self.pool.not_disabled(key)

    async def _count_server_error(self, key: PoolKey) -> None:
        """One more 5xx on the key; at the threshold (and on every error after it) a short cooldown."""
        now = self._clock()
        policy = self.pool.policy
        until = now + dt.timedelta(seconds=policy.error_cooldown_s)
        reason = f"{policy.error_threshold} consecutive upstream errors (5xx)"
        async with self._sessions.begin() as session:
            count = await repo.count_error(session, key.id)
            if count is None:
                return
            cooled = self.pool.cools_at(count) and await repo.cool(session, key.id, until, reason, now)
            await record(session, "upstream_key", key.id, now=now)
        self.pool.errors_counted(key, count)
        if cooled:
            self.pool.cooled(key, until, policy.error_cooldown_s, reason)

    async def claim_probe(self, key_id: str) -> bool:
        """Whether this replica probes the refused key now (one replica per probe interval)."""
        interval = dt.timedelta(seconds=self.pool.policy.probe_interval_s)
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
            self.pool.reenabled(key)
        return changed


def _not_found() -> NotFound:
    return NotFound("No upstream key with this id", code="not_found")


class UpstreamKeyService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        material: KeyMaterial,
        clock: Clock,
        pool: PoolService | None = None,
    ) -> None:
        """`pool`: this process's pool, reloaded at once after each change (the CLI has none: replicas learn of
        its changes through the invalidation events)."""
        self._sessions = sessions
        self._material = material
        self._clock = clock
        self._pool = pool
        self._audit = AuditService(sessions, clock)

    async def create(self, data: UpstreamKeyCreate, *, actor: str) -> UpstreamKeyOut:
        """Add a key (409 when the same key is already in the pool, whatever its state)."""
        key_id = new_id("upk_")

        async def change(audited: AuditedAction) -> UpstreamKey:
            session, now = audited.session, audited.now
            existing = await repo.find_by_fingerprints(session, self._material.fingerprints(data.key))
            if existing is not None:
                raise Conflict(f"This key is already in the pool as {existing.id} ({existing.status})", param="key")
            key = UpstreamKey(
                id=key_id,
                name=data.name,
                fingerprint=self._material.fingerprint(data.key),
                secret_encrypted=self._material.encrypt(data.key),
                enc_key_id=self._material.key_id,
                status=UpstreamKeyStatus.ACTIVE,
                weight=data.weight,
                max_in_flight=data.max_in_flight,
                in_flight=0,
                consecutive_errors=0,
                created_at=now,
                updated_at=now,
            )
            try:
                await repo.insert(session, key)
            except IntegrityError as e:  # the same key added at the same moment elsewhere
                raise Conflict("This key is already in the pool", param="key") from e
            audited.done(
                key.id,
                {
                    "name": data.name,
                    "weight": data.weight,
                    "max_in_flight": data.max_in_flight,
                    "fingerprint": key.fingerprint[:8],
                },
            )
            return key

        key = await self._change("upstream_key.create", key_id, actor, change)
        return UpstreamKeyOut.of(key, self._clock())

    async def list(self, *, limit: int = DEFAULT_PAGE, cursor: str | None = None) -> UpstreamKeyList:
        """A page of keys, oldest first; `cursor` is the previous page's `next_cursor`."""
        page = KEY_CURSOR.request(limit, cursor)
        async with self._sessions() as session:
            keys = await repo.page(session, limit=page.fetch, after_id=page.after)
        now = self._clock()
        return UpstreamKeyList.of(keys, page, lambda k: UpstreamKeyOut.of(k, now))

    async def get(self, key_id: str) -> UpstreamKeyOut:
        async with self._sessions() as session:
            key = await repo.get(session, key_id) if KEY_ID.fullmatch(key_id) else None
        if key is None:
            raise _not_found()
        return UpstreamKeyOut.of(key, self._clock())

    async def update(self, key_id: str, data: UpstreamKeyUpdate, *, actor: str) -> UpstreamKeyOut:
        """Weight, cap (null: none) and enabled (true: back in the rotation; false: disabled by an admin)."""
        changes = data.changes()

        async def change(audited: AuditedAction) -> UpstreamKey:
            values: dict[str, Any] = {k: v for k, v in changes.items() if k in ("weight", "max_in_flight")}
            enabled = changes.get("enabled")
            if enabled is True:
                values.update(
                    status=UpstreamKeyStatus.ACTIVE, status_reason=None, cooling_until=None, consecutive_errors=0
                )
            elif enabled is False:
                values.update(
                    status=UpstreamKeyStatus.DISABLED, status_reason=ADMIN_DISABLED_REASON, cooling_until=None
                )
            key = await self._apply(audited, key_id, values)
            audited.done(key.id, {"changes": changes})
            return key

        key = await self._change("upstream_key.update", key_id, actor, change)
        return UpstreamKeyOut.of(key, self._clock())

    async def drain(self, key_id: str, *, actor: str) -> UpstreamKeyOut:
        """No new task on the key; its open tasks finish (and are polled with it)."""

        async def change(audited: AuditedAction) -> UpstreamKey:
            key = await self._apply(audited, key_id, {"status": UpstreamKeyStatus.DRAINING, "cooling_until": None})
            audited.done(key.id, {"changes": {"status": UpstreamKeyStatus.DRAINING}})
            return key

        key = await self._change("upstream_key.drain", key_id, actor, change)
        return UpstreamKeyOut.of(key, self._clock())

    async def retire(self, key_id: str, *, actor: str) -> UpstreamKeyOut:
        """The key is used no more (only to poll tasks still open on it); a second retire answers the same."""

        async def change(audited: AuditedAction) -> UpstreamKey:
            key = await repo.get(audited.session, key_id) if KEY_ID.fullmatch(key_id) else None
            if key is not None and key.status == UpstreamKeyStatus.RETIRED:
                audited.done(key.id, {"already_retired": True})
                return key
            key = await self._apply(audited, key_id, {"status": UpstreamKeyStatus.RETIRED, "cooling_until": None})
            audited.done(key.id, {"changes": {"status": UpstreamKeyStatus.RETIRED}})
            return key

        key = await self._change("upstream_key.retire", key_id, actor, change)
        return UpstreamKeyOut.of(key, self._clock())

    async def rekey(self, *, actor: str) -> RekeyReport:
        """Re-encrypt every upstream key with the current GATEWAY_SECRET_KEY (fingerprint and secret id too), and
        count the tenant keys still hashed under a previous one (the tenant service re-keys them on use)."""
        current = self._material.key_id
        counts = {"upstream_keys": 0, "reencrypted": 0, "already_current": 0, "undecryptable": 0}
        async with self._audit.action(actor, "secrets.rekey", TARGET, None) as audited:
            session, now = audited.session, audited.now
            for key in await repo.list_all(session):
                counts["upstream_keys"] += 1
                try:
                    secret = self._material.decrypt(key.secret_encrypted)
                except ValueError:
                    counts["undecryptable"] += 1
                    continue
                fingerprint = self._material.fingerprint(secret)
                if key.enc_key_id == current and key.fingerprint == fingerprint:
                    counts["already_current"] += 1
                    continue
                key.secret_encrypted = self._material.reencrypt(key.secret_encrypted)
                key.fingerprint = fingerprint
                key.enc_key_id = current
                key.updated_at = now
                counts["reencrypted"] += 1
            await session.flush()
            pending = await keys_pending_rekey(session, current, now)
            if counts["reencrypted"]:
                await record(session, "upstream_key", ALL, now=now)
            report = RekeyReport(secret_key_id=current, tenant_keys_pending=pending, **counts)
            audited.done(None, report.model_dump())
        return report

    # --- one audited change ----------------------------------------------------------------------------------------
    async def _apply(self, audited: AuditedAction, key_id: str, values: dict[str, Any]) -> UpstreamKey:
        """Change a key that is not retired (a retired key is gone for every change but a repeated retire)."""
        if not KEY_ID.fullmatch(key_id):
            raise _not_found()
        key = await repo.change(
            audited.session,
            key_id,
            {**values, "updated_at": audited.now},
            UpstreamKey.status != UpstreamKeyStatus.RETIRED,
        )
        if key is None:
            raise _not_found()
        return key

    async def _change(self, action: str, key_id: str, actor: str, change: Callable[[AuditedAction], Awaitable[T]]) -> T:
        """Run `change` as one audited action with the key's invalidation event, then reload the key in this
        process."""
        async with self._audit.action(actor, action, TARGET, key_id) as audited:
            result = await change(audited)
            await record(audited.session, "upstream_key", key_id, now=audited.now)
        if self._pool is not None:
            await self._pool.reload([key_id])
        return result
