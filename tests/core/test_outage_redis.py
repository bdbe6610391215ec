"""Rate windows fail open while Redis is away (one warning per outage) and count again when it is back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.asyncio

from app.core import outage
from app.core.db.engine import create_engine, create_session_factory
from app.core.errors import RateLimited
from app.core.ids import new_id
from app.quotas.rate_limits import RateLimitService, RedisWindowStore, SqlWindowStore
from tests.fixtures.clock import FakeClock
from tests.fixtures.redis_server import NO_REDIS, redis_server
from tests.fixtures.tcp_proxy import TcpProxy

LOGGER = "tests.outage.redis"


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _tracker() -> outage.OutageTracker:
    return outage.OutageTracker("redis", consequence="rate limits not enforced", logger=logging.getLogger(LOGGER))


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


async def test_fail_open_with_one_warning_then_exact_again(caplog: pytest.LogCaptureFixture) -> None:
    server = fakeredis.FakeServer()
    monotonic = Monotonic()
    tracker = _tracker()
    store = RedisWindowStore(fakeredis.FakeAsyncRedis(server=server), tracker=tracker, monotonic=monotonic)
    service = RateLimitService(store, FakeClock(1_790_000_040.0).now)
    caplog.set_level(logging.INFO, LOGGER)

    assert (await service.enforce("ten_a", "submit", 2))["X-RateLimit-Remaining"] == "1"
    server.connected = False
    for _ in range(50):  # over the limit, yet let through: nothing to count in
        assert await service.enforce("ten_a", "submit", 2) == {}
        monotonic.now += 0.1  # probes Redis again every second meanwhile
    assert not await service.ping()
    assert (await service.health() or "").startswith("degraded: ConnectionError")
    server.connected = True
    monotonic.now += 1.0
    assert (await service.enforce("ten_a", "submit", 2))["X-RateLimit-Remaining"] == "0"
    with pytest.raises(RateLimited):
        await service.enforce("ten_a", "submit", 2)
    assert await service.ping() and await service.health() == "ok"

    lines = _outage_lines(caplog)
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert lines[0][1].startswith("redis unavailable: ConnectionError")
    assert "failed operations" in lines[1][1]


class CountingClient:
    """A Redis client whose script call fails (or hangs) and counts how often it is tried."""

    def __init__(self, *, hang: bool = False) -> None:
        self.calls = 0
        self.hang = hang

    def register_script(self, _: str) -> Any:
        async def script(**_: Any) -> int:
            self.calls += 1
            if self.hang:
                await asyncio.sleep(3600)
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

        return script


async def test_while_down_only_one_request_per_probe_interval_tries_redis() -> None:
    client = CountingClient()
    monotonic = Monotonic()
    store = RedisWindowStore(client, probe_interval_s=1.0, tracker=_tracker(), monotonic=monotonic)
    service = RateLimitService(store, FakeClock().now)
    for _ in range(100):
        assert await service.enforce("ten_a", "query", 5) == {}
    assert client.calls == 1
    monotonic.now += 1.0
    for _ in range(100):
        await service.enforce("ten_a", "query", 5)
    assert client.calls == 2


async def test_a_redis_that_does_not_answer_is_given_up_on_after_the_timeout() -> None:
    client = CountingClient(hang=True)
    tracker = _tracker()
    store = RedisWindowStore(client, timeout_s=0.2, tracker=tracker)
    service = RateLimitService(store, FakeClock().now)
    assert await asyncio.wait_for(service.enforce("ten_a", "submit", 1), 10) == {}
    assert tracker.is_down and "TimeoutError" in tracker.reason


async def test_windows_in_the_database_report_no_separate_health(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        service = RateLimitService(SqlWindowStore(create_session_factory(engine)), FakeClock().now)
        assert service.backend == "database"
        assert await service.ping()
        assert await service.health() is None
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    with redis_server(Path(tmp_path_factory.mktemp("redis"))) as url:
        yield url


async def test_a_real_redis_cut_and_restored_through_a_proxy(
    redis_url: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    if redis_url is None:
        pytest.xfail(NO_REDIS)
    tracker = _tracker()
    caplog.set_level(logging.INFO, LOGGER)
    clock = FakeClock(1_790_000_040.0)
    tenant = new_id("ten_")
    with TcpProxy.for_url(redis_url) as proxy:
        client = redis.asyncio.from_url(proxy.url_for(redis_url))
        store = RedisWindowStore(client, timeout_s=1.0, probe_interval_s=0.2, tracker=tracker)
        service = RateLimitService(store, clock.now)
        try:
            assert (await service.enforce(tenant, "submit", 3))["X-RateLimit-Remaining"] == "2"
            for mode in ("refuse", "reset", "blackhole"):
                proxy.cut(mode)  # type: ignore[arg-type]
                deadline = asyncio.get_running_loop().time() + 30
                while tracker.failures < 3:  # requests go on while Redis is retried (and refused, reset, ignored)
                    assert await service.enforce(tenant, "submit", 3) == {}
                    assert asyncio.get_running_loop().time() < deadline, f"no probe in {mode} mode"
                    await asyncio.sleep(0.05)
                proxy.restore()
                deadline = asyncio.get_running_loop().time() + 30
                while not (headers := await service.enforce(tenant, "submit", 3)):
                    assert asyncio.get_running_loop().time() < deadline, "rate limits never came back"
                    await asyncio.sleep(0.1)
                assert not tracker.is_down
                clock.advance(60)  # a fresh window for the next round
                assert headers["X-RateLimit-Limit"] == "3"
            assert (await service.enforce(tenant, "submit", 3))["X-RateLimit-Remaining"] == "2"
            await service.enforce(tenant, "submit", 3)
            await service.enforce(tenant, "submit", 3)
            with pytest.raises(RateLimited):
                await service.enforce(tenant, "submit", 3)
        finally:
            await store.aclose()
    levels = [level for level, _ in _outage_lines(caplog)]
    assert levels == [logging.WARNING, logging.INFO] * 3
