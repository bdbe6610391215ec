"""Ops rules for the upstream key pool: add, list, change, drain, retire, re-encrypt. Owns its transactions.

Every change is one audited action (`AuditService.action`): the key's row, an invalidation event (every replica
reloads the key within the invalidator's bound) and the audit event in one transaction; a refusal audited on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.service import AuditedAction, AuditService
from app.core.clock import Clock
from app.core.errors import Conflict, NotFound
from app.core.ids import new_id
from app.core.invalidation import ALL, record
from app.core.pagination import DEFAULT_PAGE
from app.core.security import KeyMaterial
from app.models import UpstreamKey, UpstreamKeyStatus
from app.upstream import repository as repo
from app.upstream.pool import ADMIN_DISABLED_REASON, UpstreamKeyPool
from app.upstream.schemas import (
    KEY_CURSOR,
    KEY_ID,
    RekeyReport,
    UpstreamKeyCreate,
    UpstreamKeyList,
    UpstreamKeyOut,
    UpstreamKeyUpdate,
)

T = TypeVar("T")
TARGET = "upstream_key"


def _not_found() -> NotFound:
    return NotFound("No upstream key with this id", code="not_found")


class UpstreamKeyService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        material: KeyMaterial,
        clock: Clock,
        pool: UpstreamKeyPool | None = None,
    ) -> None:
        """`pool`: this process's pool, updated at once after each change (the CLI has none: replicas learn of
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
            pending = await repo.tenant_keys_not_under(session, current, now)
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
