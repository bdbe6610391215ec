"""Who a key is, kept in memory: a warm request authenticates without a database read.

Entries are keyed by the key's hash under the current GATEWAY_SECRET_KEY (the plaintext key is never kept) and
dropped by the one invalidation mechanism (app/core/invalidation.py) when their key or tenant changes on any replica:
a revocation, rotation, tenant disable or limit change reaches every process within `Invalidator.bound_s`. Time-bound
validity (a key's expiry, a rotated key's grace) is checked on every hit, so it needs no event.

Two rules keep a stale entry out:
- While the invalidator is not `fresh` (events cannot be read: database away, or not yet started) the cache is not
  used at all.
- A miss reads the database and then stores its answer only if no invalidation arrived since the read began
  (`generation`), so an answer read before a revocation cannot be stored after the revocation was applied.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.invalidation import ALL

if TYPE_CHECKING:
    from app.core.invalidation import Invalidator
    from app.tenants.service import AuthenticatedKey

DEFAULT_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    who: AuthenticatedKey
    expires_at: dt.datetime | None


class AuthCache:
    def __init__(self, invalidator: Invalidator | None, size: int = DEFAULT_SIZE) -> None:
        self._invalidator = invalidator
        self._size = size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.generation = 0
        if invalidator is not None:
            invalidator.subscribe("tenant", self._drop_tenant)
            invalidator.subscribe("tenant_key", self._drop_key)

    @property
    def usable(self) -> bool:
        return self._invalidator is not None and self._invalidator.fresh

    def get(self, key_hash: str, now: dt.datetime) -> AuthenticatedKey | None:
        if not self.usable:
            return None
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= now:
            del self._entries[key_hash]
            return None
        self._entries.move_to_end(key_hash)
        return entry.who

    def put(self, key_hash: str, who: AuthenticatedKey, expires_at: dt.datetime | None, generation: int) -> None:
        """Store what a read that began at `generation` found (nothing if an invalidation came in between)."""
        if not self.usable or generation != self.generation:
            return
        self._entries[key_hash] = _Entry(who, expires_at)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def drop_all(self) -> None:
        self._drop(lambda entry: True)

    def _drop_tenant(self, tenant_id: str) -> None:
        self._drop(lambda entry: tenant_id == ALL or entry.who.tenant.id == tenant_id)

    def _drop_key(self, key_id: str) -> None:
        self._drop(lambda entry: key_id == ALL or entry.who.key_id == key_id)

    def _drop(self, matches: Callable[[_Entry], bool]) -> None:
        self.generation += 1
        for key_hash in [h for h, entry in self._entries.items() if matches(entry)]:
            del self._entries[key_hash]
