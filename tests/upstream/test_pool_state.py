"""The key pool's shared state on both databases: seeding, the state every replica sees, caps, probe claims, and the
invalidation events that carry a change from one process's pool to another's."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db.engine import create_engine, create_session_factory
from app.core.errors import (
    NoUpstreamKey,
    SecretKeyMismatch,
    UpstreamCredentialsRefused,
    UpstreamRejected,
    UpstreamTimeout,
)
from app.core.invalidation import Invalidator
from app.core.security import KeyMaterial
from app.models import InvalidationEvent, UpstreamKey
from app.upstream.base import UpstreamServerError
from app.upstream.pool import UpstreamKeyPool
from app.upstream.service import PoolService
from tests.fixtures.clock import FakeClock

SECRET = "pool-state-secret-0123456789abcdef"
NEW_SECRET = "pool-state-new-secret-0123456789ab"
KEYS = ["sk-upstream-one-0001", "sk-upstream-two-0002"]


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url, pool_size=4)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


def replica(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock, material: KeyMaterial | None = None
) -> PoolService:
    """One process's pool: its service, and the state it keeps in memory (`.pool`)."""
    material = material or KeyMaterial(SECRET)
    return PoolService(sessions, material, clock.now, UpstreamKeyPool(material, clock.now))


async def rows(sessions: async_sessionmaker[AsyncSession]) -> dict[str, UpstreamKey]:
    async with sessions() as session:
        return {k.name: k for k in (await session.execute(select(UpstreamKey))).scalars()}


async def events(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        stmt = select(InvalidationEvent.key).where(InvalidationEvent.topic == "upstream_key")
        return list((await session.execute(stmt.order_by(InvalidationEvent.id))).scalars())


async def test_configured_keys_are_stored_once_encrypted(sessions: async_sessionmaker[AsyncSession]) -> None:
    clock = FakeClock()
    a, b = replica(sessions, clock), replica(sessions, clock)
    await asyncio.gather(a.load(KEYS), b.load(KEYS))  # two replicas starting at once
    await replica(sessions, clock).load(KEYS)
    stored = await rows(sessions)
    assert sorted(stored) == ["configured-1", "configured-2"]
    for row in stored.values():
        assert row.status == "active" and row.enc_key_id == KeyMaterial(SECRET).key_id
        assert row.secret_encrypted not in KEYS and all(k not in row.secret_encrypted for k in KEYS)
    assert sorted(k.secret for k in a.pool.snapshot()) == sorted(KEYS)
    assert len(await events(sessions)) == 2  # one event per key added, whoever added it


async def test_a_rotated_secret_key_neither_duplicates_nor_loses_a_key(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = FakeClock()
    await replica(sessions, clock).load(KEYS)
    rotated = replica(sessions, clock, KeyMaterial(NEW_SECRET, [SECRET]))
    await rotated.load(KEYS)  # fingerprints under the previous secret still find the stored keys
    assert len(await rows(sessions)) == 2
    assert sorted(k.secret for k in rotated.pool.snapshot()) == sorted(KEYS)
    with pytest.raises(SecretKeyMismatch, match="GATEWAY_SECRET_KEY"):  # serve names the demo's secrets from it
        await replica(sessions, clock, KeyMaterial(NEW_SECRET)).load(KEYS)
    assert len(await rows(sessions)) == 2  # the failed start added nothing


async def test_a_429_cools_the_key_for_every_replica(sessions: async_sessionmaker[AsyncSession]) -> None:
    clock = FakeClock()
    a, b = replica(sessions, clock), replica(sessions, clock)
    await a.load(KEYS[:1])
    await b.load([])
    key = a.pool.choose()
    limited = UpstreamRejected(429, {"error": {"code": "rate_limit_exceeded"}}, {"Retry-After": "7"})
    assert await a.report_failure(key, limited) is True
    stored = (await rows(sessions))["configured-1"]
    assert stored.status == "cooling" and stored.cooling_until == clock.now() + dt.timedelta(seconds=7)
    assert await events(sessions) == [key.id, key.id]  # added, cooled
    with pytest.raises(NoUpstreamKey) as info:
        a.pool.choose()
    assert info.value.headers["Retry-After"] == "7"
    await b.reload([key.id])  # what b's invalidation callback does
    with pytest.raises(NoUpstreamKey):
        b.pool.choose()
    # The database refuses the key even to a replica that has not heard of the cooldown yet.
    stale = replica(sessions, clock)
    stale.pool.set_keys([key])
    async with sessions.begin() as session:
        with pytest.raises(NoUpstreamKey):
            await stale.take_slot(session, key)
    clock.advance(7)
    assert b.pool.choose().id == key.id  # usable again without a write
    async with sessions.begin() as session:
        assert (await stale.take_slot(session, key)).id == key.id


async def test_401_disables_and_5xx_cool_after_three(
    sessions: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    pool = replica(sessions, clock)
    await pool.load(KEYS)
    one, two = sorted(pool.pool.snapshot(), key=lambda k: k.name)
    assert await pool.report_failure(one, UpstreamCredentialsRefused("refused (401)")) is True
    stored = await rows(sessions)
    assert stored["configured-1"].status == "disabled"
    assert stored["configured-1"].status_reason == "refused by the upstream (401)"
    alerts = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(alerts) == 1 and one.id in alerts[0].getMessage()
    assert all(k not in r.getMessage() for r in caplog.records for k in KEYS)
    # A 401 on a status call disables too; a 429 or 5xx on one says nothing about the key.
    assert await pool.report_failure(two, UpstreamServerError(500), call="status") is False
    assert await pool.report_failure(two, UpstreamTimeout("slow")) is False
    for _ in range(2):
        assert await pool.report_failure(two, UpstreamServerError(502)) is False
    assert (await rows(sessions))["configured-2"].consecutive_errors == 2
    assert pool.pool.choose().id == two.id  # still usable (the only one left)
    await pool.report_failure(two, UpstreamServerError(503))
    stored = await rows(sessions)
    assert stored["configured-2"].status == "cooling"
    assert stored["configured-2"].cooling_until == clock.now() + dt.timedelta(seconds=30)
    clock.advance(30)
    key = pool.pool.choose()
    await pool.report_success(key)
    assert (await rows(sessions))["configured-2"].consecutive_errors == 0
    written = len(await events(sessions))
    await pool.report_success(key)  # nothing to reset: no write
    assert len(await events(sessions)) == written


async def test_the_cap_is_counted_in_the_database(sessions: async_sessionmaker[AsyncSession]) -> None:
    clock = FakeClock()
    a, b = replica(sessions, clock), replica(sessions, clock)
    await a.load(KEYS[:1])
    await b.load([])
    key_id = a.pool.choose().id
    async with sessions.begin() as session:
        await session.execute(UpstreamKey.__table__.update().values(max_in_flight=2))
    await a.reload()
    await b.reload()

    async def take(pool: PoolService) -> bool:
        try:
            async with sessions.begin() as session:
                await pool.take_slot(session, pool.pool.get(key_id))
        except NoUpstreamKey:
            return False
        return True

    results = await asyncio.gather(*(take(p) for p in (a, b, a, b, a, b)))
    assert sorted(results) == [False] * 4 + [True] * 2
    assert (await rows(sessions))["configured-1"].in_flight == 2
    async with sessions.begin() as session:
        for _ in range(3):  # never below zero
            await a.release_slot(session, key_id)
    assert (await rows(sessions))["configured-1"].in_flight == 0


async def test_one_replica_claims_each_probe(sessions: async_sessionmaker[AsyncSession]) -> None:
    clock = FakeClock()
    a, b = replica(sessions, clock), replica(sessions, clock)
    await a.load(KEYS[:1])
    key = a.pool.choose()
    await a.report_failure(key, UpstreamCredentialsRefused("refused (403)"))
    await b.load([])
    assert [k.refused_by_upstream for k in b.pool.snapshot()] == [True]
    assert await asyncio.gather(a.claim_probe(key.id), b.claim_probe(key.id)) == [False, False]  # just disabled
    clock.advance(a.pool.policy.probe_interval_s + 1)
    assert sorted(await asyncio.gather(a.claim_probe(key.id), b.claim_probe(key.id))) == [False, True]
    assert await b.reenable(key) is True
    assert await a.reenable(key) is False  # once
    await a.reload([key.id])
    assert a.pool.choose().id == key.id


async def test_invalidation_events_carry_a_change_to_another_pool(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = FakeClock()
    a, b = replica(sessions, clock), replica(sessions, clock)
    await a.load(KEYS[:1])
    invalidator = Invalidator(sessions, clock.now)
    await b.load([])
    b.subscribe(invalidator)
    await invalidator.poll_once()  # first read: everything is reloaded
    key = a.pool.choose()
    await a.report_failure(key, UpstreamRejected(429, {}, {"retry-after": "60"}))
    await invalidator.poll_once()
    await _until(lambda: not b.pool.snapshot()[0].takes_new(clock.now()))
    await b.aclose()


async def _until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
