"""Whether the database an engine talks to may have changed under it: what makes in-memory caches start over.

A cache kept beside the ledger (who a key is, app/tenants/auth_cache.py) is trusted only while the invalidation
events (app/core/invalidation.py) are read in order from the same database. Two things break that order without a
failed read of the events: a connection found lost or none to be had (the database went away, maybe to come back
as another one), and a new connection that reaches a different database than the one before (dropped and created
again, restored from a backup, a standby promoted, a restarted server). Either moves the engine's `epoch` on; the
invalidator then stops trusting caches at once and starts over from the newest event, dropping everything cached.

A database is told apart by its oid in the cluster and its server's start time, read once per new connection
(`connect` event: nothing per statement). A changed start time after a mere restart starts caches over too, which
costs one read per cached key and is never wrong.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

_IDENTITY_SQL = (
    "SELECT (SELECT oid FROM pg_database WHERE datname = current_database())::text"
    " || '@' || pg_postmaster_start_time()::text"
)


class Continuity:
    """An engine's epoch: moved on by a lost connection or a connection to another database."""

    __slots__ = ("_identity", "epoch")

    def __init__(self) -> None:
        self.epoch = 0
        self._identity: str | None = None

    def lost(self) -> None:
        """A connection was found lost, or none could be made: whatever comes back may be another database."""
        self.epoch += 1

    def connected(self, identity: str) -> None:
        """A new connection reached the database `identity` (a change from the last one moves the epoch on)."""
        if self._identity is not None and identity != self._identity:
            self.epoch += 1
        self._identity = identity


_BY_ENGINE: weakref.WeakKeyDictionary[Any, Continuity] = weakref.WeakKeyDictionary()


def of(engine: AsyncEngine) -> Continuity:
    """The engine's continuity (watched from the first call on: app/core/db/engine.py calls it at creation)."""
    sync_engine = engine.sync_engine
    continuity = _BY_ENGINE.get(sync_engine)
    if continuity is None:
        continuity = _BY_ENGINE[sync_engine] = Continuity()
        _watch(sync_engine, continuity)
    return continuity


def _watch(sync_engine: Any, continuity: Continuity) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(_IDENTITY_SQL)
            row = cursor.fetchone()
        finally:
            cursor.close()
        continuity.connected(str(row[0]))

    @event.listens_for(sync_engine, "handle_error")
    def _on_error(context: Any) -> None:
        if context.is_disconnect or context.connection is None:  # lost, or no connection to be had at all
            continuity.lost()
