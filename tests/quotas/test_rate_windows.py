"""Rate windows in each store: the database and Redis, through the one service."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.db.engine import create_engine, create_session_factory
from app.core.errors import RateLimited
from app.core.ids import new_id
from app.models import Tenant
from app.quotas.rate_limits import Counted, RateLimitService, RedisWindowStore, SqlWindowStore, WindowStore
from tests.fixtures.clock import FakeClock


async def _redis_client() -> Any:
    url = os.environ.get("GATEWAY_TEST_REDIS_URL")
    if url:  # a real server when one is named
        import redis.asyncio

        client = redis.asyncio.from_url(url)
        await client.flushdb()
        return client
    import fakeredis

    return fakeredis.FakeAsyncRedis()


@pytest.fixture(params=["database", "redis"])
async def store(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[tuple[WindowStore, str]]:
    engine = create_engine(database_url, pool_size=5)
    sessions = create_session_factory(engine)
    tenant_id = new_id("ten_")
    now = dt.datetime.now(dt.UTC)
    async with sessions.begin() as session:
        session.add(Tenant(id=tenant_id, name=tenant_id, status="active", created_at=now, updated_at=now))
    if request.param == "database":
        yield SqlWindowStore(sessions), tenant_id
    else:
        redis_store = RedisWindowStore(await _redis_client())
        yield redis_store, tenant_id
        await redis_store.aclose()
    await engine.dispose()


async def test_exact_under_concurrency_and_refusals_not_counted(store: tuple[WindowStore, str]) -> None:
    window_store, tenant_id = store
    clock = FakeClock(1_790_000_040.0)
    service = RateLimitService(window_store, clock.now)

    async def one() -> bool:
        try:
            await service.enforce(tenant_id, "submit", 10)
            return True
        except RateLimited:
            return False

    results = await asyncio.gather(*[one() for _ in range(40)])
    assert results.count(True) == 10
    clock.advance(60)  # next window: refusals of the last one did not count against it
    results = await asyncio.gather(*[one() for _ in range(5)])
    assert results == [True] * 5


async def test_kinds_and_tenants_are_counted_apart(store: tuple[WindowStore, str]) -> None:
    window_store, tenant_id = store
    clock = FakeClock(1_790_000_040.0)
    service = RateLimitService(window_store, clock.now)
    await service.enforce(tenant_id, "submit", 1)
    headers = await service.enforce(tenant_id, "query", 1)
    assert headers["X-RateLimit-Remaining"] == "0"
    with pytest.raises(RateLimited) as refused:
        await service.enforce(tenant_id, "submit", 1)
    assert refused.value.headers["Retry-After"] == "60"
    assert refused.value.status_code == 429


async def test_zero_limit_refuses_everything(store: tuple[WindowStore, str]) -> None:
    window_store, tenant_id = store
    service = RateLimitService(window_store, FakeClock().now)
    with pytest.raises(RateLimited):
        await service.enforce(tenant_id, "submit", 0)
    assert await service.enforce(tenant_id, "submit", None) == {}


async def test_a_request_given_back_frees_its_slot_in_its_own_window(store: tuple[WindowStore, str]) -> None:
    window_store, tenant_id = store
    clock = FakeClock(1_790_000_040.0)
    service = RateLimitService(window_store, clock.now)
    counted: list[Counted] = []
    await service.enforce(tenant_id, "submit", 1, counted=counted)
    assert [(c.kind, c.window_start) for c in counted] == [("submit", 1_790_000_040)]
    await service.give_back(counted)
    await service.enforce(tenant_id, "submit", 1)  # the slot is free again
    with pytest.raises(RateLimited):
        await service.enforce(tenant_id, "submit", 1)
    clock.advance(60)
    await service.give_back(counted)  # the old window: nothing below zero, the new one untouched
    await service.give_back(counted)
    await service.enforce(tenant_id, "submit", 1)
    with pytest.raises(RateLimited):
        await service.enforce(tenant_id, "submit", 1)
