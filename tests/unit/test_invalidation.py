"""The invalidation mechanism on a real database: an event recorded in one process's transaction reaches another's
subscribers on its next read; a rolled-back change sends nothing; a reader that could not read drops everything."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db.engine import create_engine, create_session_factory
from app.invalidation import ALL, Invalidator, record


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url, pool_size=2)
    yield create_session_factory(engine)
    await engine.dispose()


async def test_a_committed_change_reaches_another_reader(sessions: async_sessionmaker[AsyncSession]) -> None:
    reader = Invalidator(sessions, utcnow)
    seen: list[tuple[str, str]] = []
    reader.subscribe("tenant_key", lambda key: seen.append(("tenant_key", key)))
    reader.subscribe("tenant", lambda key: seen.append(("tenant", key)))
    await reader.poll_once()  # starts from now
    seen.clear()  # the first read drops everything once (nothing was known before it)

    async with sessions.begin() as session:
        await record(session, "tenant_key", "key_1", now=utcnow())
        await record(session, "tenant", "ten_1", now=utcnow())
    assert await reader.poll_once() == 2
    assert seen == [("tenant_key", "key_1"), ("tenant", "ten_1")]
    assert reader.fresh
    assert await reader.poll_once() == 0  # each event once


async def test_a_rolled_back_change_sends_nothing(sessions: async_sessionmaker[AsyncSession]) -> None:
    reader = Invalidator(sessions, utcnow)
    seen: list[str] = []
    reader.subscribe("upstream_key", seen.append)
    await reader.poll_once()
    seen.clear()
    with pytest.raises(RuntimeError):
        async with sessions.begin() as session:
            await record(session, "upstream_key", "upk_1", now=utcnow())
            raise RuntimeError("the change failed")
    assert await reader.poll_once() == 0
    assert seen == []


async def test_events_before_start_are_not_replayed_and_a_stale_reader_drops_everything(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions.begin() as session:
        await record(session, "tenant", "old", now=utcnow())
    reader = Invalidator(sessions, utcnow, interval_s=0.0)  # any pause makes it stale
    seen: list[str] = []
    reader.subscribe("tenant", seen.append)
    assert not reader.fresh
    await reader.poll_once()
    assert seen == [ALL]  # never read before: whatever was cached is dropped, the old event is not replayed
    await reader.poll_once()
    assert seen.count(ALL) >= 1 and "old" not in seen


async def test_one_failed_read_stops_trust_at_once_and_the_next_read_drops_everything(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """However short the outage (a database replaced under the gateway restarts its event ids): after one failed
    read the caches are bypassed, and the first read that works drops everything and starts from the newest event."""
    reader = Invalidator(sessions, utcnow)
    seen: list[str] = []
    reader.subscribe("tenant", seen.append)
    await reader.poll_once()
    seen.clear()
    assert reader.fresh

    class Broken:
        def __call__(self) -> AsyncSession:
            raise ConnectionRefusedError("database away")

    working, reader._sessions = reader._sessions, Broken()  # type: ignore[assignment]
    with pytest.raises(ConnectionRefusedError):
        await reader.poll_once()
    assert not reader.fresh  # at once, not after the bound
    reader._sessions = working
    await reader.poll_once()
    assert seen == [ALL] and reader.fresh
