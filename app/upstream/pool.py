"""The pool of the organisation's upstream keys: which key sends a new task, and the key of an existing one."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import Clock
from app.core.errors import NoUpstreamKey, SettingsError
from app.core.ids import new_id
from app.core.security import KeyMaterial
from app.models import UpstreamKey
from app.upstream import repository as repo


@dataclass(frozen=True, slots=True)
class PoolKey:
    id: str
    secret: str


class UpstreamKeyPool:
    """Round-robin over active keys, held decrypted in memory only."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], material: KeyMaterial, clock: Clock) -> None:
        self._sessions = sessions
        self._material = material
        self._clock = clock
        self._keys: list[PoolKey] = []
        self._by_id: dict[str, PoolKey] = {}
        self._cycle: itertools.cycle[PoolKey] | None = None

    async def load(self, configured: Iterable[str]) -> None:
        """Add configured keys to the stored pool (once each), then load every active key."""
        async with self._sessions.begin() as session:
            await self._load(session, self._material, configured, self._clock())

    async def _load(
        self, session: AsyncSession, material: KeyMaterial, configured: Iterable[str], now: dt.datetime
    ) -> None:
        for index, secret in enumerate(configured):
            fingerprint = material.fingerprint(secret)
            if await repo.get_by_fingerprint(session, fingerprint) is None:
                await repo.insert(
                    session,
                    UpstreamKey(
                        id=new_id("upk_"),
                        name=f"configured-{index + 1}",
                        fingerprint=fingerprint,
                        secret_encrypted=material.encrypt(secret),
                        status="active",
                        created_at=now,
                    ),
                )
        try:
            keys = [PoolKey(k.id, material.decrypt(k.secret_encrypted)) for k in await repo.list_active(session)]
        except ValueError as e:
            raise SettingsError(
                "Stored upstream keys cannot be decrypted with this GATEWAY_SECRET_KEY: it was changed; restore it."
            ) from e
        self.set_keys(keys)

    def set_keys(self, keys: list[PoolKey]) -> None:
        self._keys = keys
        self._by_id = {k.id: k for k in keys}
        self._cycle = itertools.cycle(keys) if keys else None

    def choose(self) -> PoolKey:
        if self._cycle is None:
            raise NoUpstreamKey("No upstream key is configured (set GATEWAY_UPSTREAM_KEYS)")
        return next(self._cycle)

    def get(self, key_id: str | None) -> PoolKey:
        key = self._by_id.get(key_id or "")
        if key is None:
            raise NoUpstreamKey("The upstream key that created this task is no longer available")
        return key

    def __len__(self) -> int:
        return len(self._keys)
