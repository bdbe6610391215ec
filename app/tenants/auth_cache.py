"""Who a key is, kept in memory: a warm request authenticates without a database read.

Entries are keyed by the key's hash under the current GATEWAY_SECRET_KEY (the plaintext key is never kept), and by
the key's id too (an end-user token names the key that minted it: app/tenants/tokens.py), and dropped by the one
invalidation mechanism (app/core/invalidation.py) when their key or tenant changes on any replica: a revocation,
rotation, tenant disable or limit change reaches every process within `Invalidator.bound_s`. Time-bound validity (a
key's expiry, a rotated key's grace) is checked on every hit, so it needs no event.

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
        self._by_id: OrderedDict[str, _Entry] = OrderedDict()  # the same keys by id (and keys known only by id)
        self.generation = 0
        if invalidator is not None:
            invalidator.subscribe("tenant", self._drop_tenant)
            invalidator.subscribe("tenant_key", self._drop_key)

    @property
    def usable(self) -> bool:
        return self._invalidator is not None and self._invalidator.fresh

    def get(self, key_hash: str, now: dt.datetime) -> AuthenticatedKey | None:
        return self._get(self._entries, key_hash, now) if self.usable else None

    def get_key(self, key_id: str, now: dt.datetime) -> AuthenticatedKey | None:
        """A key by its id (a token's minting key)."""
        return self._get(self._by_id, key_id, now) if self.usable else None

    def put(self, key_hash: str, who: AuthenticatedKey, expires_at: dt.datetime | None, generation: int) -> None:
        """Store what a read that began at `generation` found (nothing if an invalidation came in between)."""
        if not self.usable or generation != self.generation:
            return
        entry = _Entry(who, expires_at)
        self._put(self._entries, key_hash, entry)
        self._put(self._by_id, who.key_id, entry)

    def put_key(self, who: AuthenticatedKey, expires_at: dt.datetime | None, generation: int) -> None:
        """Store a key read by its id (`put`'s rules)."""
        if self.usable and generation == self.generation:
            self._put(self._by_id, who.key_id, _Entry(who, expires_at))

    def _get(self, entries: OrderedDict[str, _Entry], name: str, now: dt.datetime) -> AuthenticatedKey | None:
        entry = entries.get(name)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= now:
            del entries[name]
            return None
        entries.move_to_end(name)
        return entry.who

    def _put(self, entries: OrderedDict[str, _Entry], name: str, entry: _Entry) -> None:
        entries[name] = entry
        entries.move_to_end(name)
        while len(entries) > self._size:
            entries.popitem(last=False)

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
        for entries in (self._entries, self._by_id):
            for name in [name for name, entry in entries.items() if matches(entry)]:
                del entries[name]
