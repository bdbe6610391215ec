"""The invalidation mechanism on a real database: an event recorded in one process's transaction reaches another's
subscribers on its next read, whatever order transactions commit in; a rolled-back change sends nothing; a reader that
could not read drops everything."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import delete, event, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db import continuity
from app.core.db.engine import create_engine, create_session_factory
from app.core.invalidation import ALL, MAX_GAPS, Invalidator, record
from app.models import InvalidationEvent
from tests.fixtures.databases import create_postgres_database, drop_postgres_database, migrated

# What a busy CI machine may need before every other transaction on the server has ended (other test workers').
SETTLE_DEADLINE_S = 30.0
# An interval that keeps a reader fresh (twice it) for the whole test: freshness then ends only by the rule under test.
FRESH_FOR_THE_TEST_S = 3600.0


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url, pool_size=4)  # a reader, a transaction held open, one committing meanwhile
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


async def _started_reader(sessions: async_sessionmaker[AsyncSession]) -> tuple[Invalidator, list[str]]:
    """A reader that has read once (fresh), and the tenant keys its later reads name. Its interval is long, so only
    the rule under test ends its freshness, never a busy machine's pause between two lines."""
    reader = Invalidator(sessions, utcnow, interval_s=FRESH_FOR_THE_TEST_S)
    seen: list[str] = []
    reader.subscribe("tenant", seen.append)
    await reader.poll_once()
    seen.clear()  # the first read drops everything once
    assert reader.fresh
    return reader, seen


async def test_one_failed_read_stops_trust_at_once_and_the_next_read_drops_everything(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """However short the outage (a database replaced under the gateway restarts its event ids): after one failed
    read the caches are bypassed, and the first read that works drops everything and starts from the newest event."""
    reader, seen = await _started_reader(sessions)

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


def _engine(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    engine = sessions.kw["bind"]
    assert isinstance(engine, AsyncEngine)
    return engine


async def test_a_connection_found_lost_stops_trust_at_once_and_the_next_read_drops_everything(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A request that found its connection lost (the database went away, and may come back as another) stops the
    caches at once, before the reader's own next read fails or not."""
    reader, seen = await _started_reader(sessions)

    continuity.of(_engine(sessions)).lost()
    assert not reader.fresh
    await reader.poll_once()
    assert seen == [ALL] and reader.fresh


async def test_the_same_url_reaching_another_database_starts_the_reader_over(
    sessions: async_sessionmaker[AsyncSession], postgres_server: str
) -> None:
    """A database dropped and created again, or restored from a backup, between two reads: no read fails, but the
    event ids start again below the last one read, so the reader would see none of the new database's events and
    the caches would keep keys the new database does not have. A new connection that reaches another database
    makes the reader start over from its newest event and drop everything; reconnecting to the same one does not."""
    engine = _engine(sessions)
    reader = Invalidator(sessions, utcnow, interval_s=FRESH_FOR_THE_TEST_S)  # (migrating a database takes a while)
    seen: list[str] = []
    reader.subscribe("tenant", seen.append)
    for n in range(3):  # the first database's ids move past the other's
        async with sessions.begin() as session:
            await record(session, "tenant", f"first_{n}", now=utcnow())
    await reader.poll_once()
    seen.clear()

    await engine.dispose()  # new connections to the same database: nothing to start over
    assert await reader.poll_once() == 0
    assert seen == [] and reader.fresh

    other_url = await asyncio.to_thread(
        lambda: migrated(create_postgres_database(postgres_server, prefix="gw_replaced"))
    )
    try:
        other = make_url(other_url).database

        @event.listens_for(engine.sync_engine, "do_connect")
        def _to_the_other(_dialect: object, _record: object, _cargs: object, cparams: dict[str, object]) -> None:
            cparams["database"] = other  # the same URL, another database behind it

        await engine.dispose()  # what a DROP ... WITH (FORCE) and the idle ping leave: no failed statement
        assert reader.fresh  # nothing has connected yet
        assert await reader.poll_once() == 0
        assert seen == [ALL] and reader.fresh  # started over: everything cached is dropped

        async with sessions.begin() as session:
            await record(session, "tenant", "in_the_other", now=utcnow())
        assert await reader.poll_once() == 1
        assert seen == [ALL, "in_the_other"]  # read in the new database's order
    finally:
        await engine.dispose()
        await asyncio.to_thread(drop_postgres_database, other_url)


async def test_an_event_committed_after_a_later_one_arrives_however_long_its_transaction_stays_open(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """PostgreSQL hands out the id at insert: the revocation holds the lower id and commits after a later event was
    read. The reader re-reads the skipped id until it appears, and asks on every read here (no check delay) without
    letting it go while its transaction is still open."""
    reader = Invalidator(sessions, utcnow, gap_check_s=0.0)
    seen: list[str] = []
    reader.subscribe("tenant_key", seen.append)
    await reader.poll_once()
    seen.clear()

    async with sessions.begin() as held:
        held_id = await _record(held, "revoked")  # its id now, its commit last
        async with sessions.begin() as later:
            await _record(later, "later")
        assert await reader.poll_once() == 1
        for _ in range(5):
            assert await reader.poll_once() == 0
            assert held_id in reader.waiting_for
        assert seen == ["later"]
    assert await reader.poll_once() == 1
    assert seen == ["later", "revoked"] and held_id not in reader.waiting_for
    assert await reader.poll_once() == 0


async def test_a_starting_reader_watches_the_ids_still_open_below_the_newest_event(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A replica (re)started while a change is in flight: its first read starts after the newest event, yet the
    change committed afterwards with a lower id still reaches it."""
    reader = Invalidator(sessions, utcnow)
    seen: list[str] = []
    reader.subscribe("tenant_key", seen.append)
    async with sessions.begin() as held:
        held_id = await _record(held, "revoked")
        async with sessions.begin() as later:
            await _record(later, "later")
        await reader.poll_once()
        assert seen == [ALL] and held_id in reader.waiting_for
    assert await reader.poll_once() == 1
    assert seen == [ALL, "revoked"]


async def _record(session: AsyncSession, key: str) -> int:
    """record() a change of tenant key `key`; the id its event took."""
    await record(session, "tenant_key", key, now=utcnow())
    return (await session.scalars(select(InvalidationEvent.id).where(InvalidationEvent.key == key))).one()


async def _commit_after_skipping(sessions: async_sessionmaker[AsyncSession], skipped: int, key: str) -> set[int]:
    """Commit one event whose id comes after `skipped` ids that will never be read (as a rolled-back transaction's)."""
    async with sessions.begin() as session:
        now = utcnow()
        await session.execute(insert(InvalidationEvent), [{"topic": "tenant", "key": key, "created_at": now}] * skipped)
        ids = (await session.scalars(select(InvalidationEvent.id).where(InvalidationEvent.key == key))).all()
        await record(session, "tenant", key, now=now)
        await session.execute(delete(InvalidationEvent).where(InvalidationEvent.id.in_(ids)))
    return set(ids)


async def test_an_id_that_can_no_longer_commit_is_let_go_without_dropping_anything(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    reader = Invalidator(sessions, utcnow, gap_check_s=0.0)
    seen: list[str] = []
    reader.subscribe("tenant", seen.append)
    await reader.poll_once()
    seen.clear()
    skipped = await _commit_after_skipping(sessions, 2, "ten_1")
    assert await reader.poll_once() == 1
    assert skipped <= reader.waiting_for
    deadline = time.monotonic() + SETTLE_DEADLINE_S
    while reader.waiting_for:  # PostgreSQL: once every transaction older than the gap has ended (any database's)
        assert time.monotonic() < deadline, "the gap was never let go"
        assert await reader.poll_once() == 0
        await asyncio.sleep(0.05)
    assert seen == ["ten_1"]


async def test_ids_jumping_past_what_can_be_watched_drop_everything(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    reader = Invalidator(sessions, utcnow)
    seen: list[str] = []
    reader.subscribe("tenant", seen.append)
    await reader.poll_once()
    seen.clear()
    skipped = await _commit_after_skipping(sessions, MAX_GAPS + 1, "ten_1")
    assert await reader.poll_once() == 1
    assert seen == [ALL, "ten_1"] and not skipped & reader.waiting_for
