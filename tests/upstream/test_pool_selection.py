"""Choosing an upstream key, in memory, with a fake clock: weights, caps (the full hint), cooldowns, states."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import pytest

from app.core.errors import NoUpstreamKey
from app.core.security import KeyMaterial
from app.upstream import repository as repo
from app.upstream.base import parse_retry_after
from app.upstream.pool import PoolKey, UpstreamKeyPool
from app.upstream.service import PoolService
from tests.fixtures.clock import FakeClock

MATERIAL = KeyMaterial("unit-secret-key-0123456789abcdef")


def make_pool(clock: FakeClock, *keys: PoolKey) -> UpstreamKeyPool:
    pool = UpstreamKeyPool(MATERIAL, clock.now)  # choosing needs no database
    pool.set_keys(keys)
    return pool


def key(key_id: str, **fields: Any) -> PoolKey:
    return PoolKey(id=key_id, secret=f"sk-secret-{key_id}", name=key_id, **fields)


def picks(pool: UpstreamKeyPool, count: int, **kwargs: Any) -> Counter[str]:
    return Counter(pool.choose(**kwargs).id for _ in range(count))


def test_weights_give_exact_shares_without_bursts() -> None:
    pool = make_pool(FakeClock(), key("a", weight=1), key("b", weight=3), key("c", weight=6))
    sequence = [pool.choose().id for _ in range(1000)]
    assert Counter(sequence) == {"a": 100, "b": 300, "c": 600}
    # Smooth: the heaviest key never takes more than two picks in a row at these weights.
    runs = max(len(run) for run in "".join(sequence).replace("a", " ").replace("b", " ").split())
    assert runs <= 2


def test_equal_weights_alternate() -> None:
    pool = make_pool(FakeClock(), key("a"), key("b"))
    assert [pool.choose().id for _ in range(4)] in (["a", "b", "a", "b"], ["b", "a", "b", "a"])


def test_only_active_and_cooled_down_keys_take_new_tasks() -> None:
    clock = FakeClock()
    later = clock.now() + dt.timedelta(seconds=2)
    pool = make_pool(
        clock,
        key("active"),
        key("cooling", status="cooling", cooling_until=later),
        key("disabled", status="disabled"),
        key("draining", status="draining"),
        key("retired", status="retired"),
    )
    assert set(picks(pool, 50)) == {"active"}
    clock.advance(1.999)
    assert set(picks(pool, 50)) == {"active"}
    clock.advance(0.001)  # the cooldown is over: usable again without any write
    assert set(picks(pool, 50)) == {"active", "cooling"}
    assert pool.get("draining").secret == "sk-secret-draining"  # pinned tasks still read with it
    assert pool.get("retired").id == "retired"
    assert len(pool) == 2  # what readiness counts: keys that take new tasks now or after a cooldown


def test_exclude_and_no_key_left() -> None:
    pool = make_pool(FakeClock(), key("a"), key("b"))
    assert set(picks(pool, 10, exclude={"a"})) == {"b"}
    with pytest.raises(NoUpstreamKey) as info:
        pool.choose(exclude={"a", "b"})
    assert info.value.status_code == 503 and info.value.code == "upstream_unavailable"
    assert info.value.headers["Retry-After"] == "5"  # keys exist that take tasks: they were full


def test_retry_after_is_the_soonest_end_of_a_cooldown() -> None:
    clock = FakeClock()
    now = clock.now()
    pool = make_pool(
        clock,
        key("a", status="cooling", cooling_until=now + dt.timedelta(seconds=30)),
        key("b", status="cooling", cooling_until=now + dt.timedelta(seconds=2.2)),
        key("c", status="disabled"),
    )
    with pytest.raises(NoUpstreamKey) as info:
        pool.choose()
    assert info.value.headers["Retry-After"] == "3"
    clock.advance(2.2)
    assert pool.choose().id == "b"


def test_retry_after_without_any_usable_key_is_a_probe_interval() -> None:
    pool = make_pool(FakeClock(), key("a", status="disabled"), key("b", status="draining"))
    with pytest.raises(NoUpstreamKey) as info:
        pool.choose()
    assert info.value.headers["Retry-After"] == str(int(pool.policy.probe_interval_s))
    assert len(pool) == 0
    empty = make_pool(FakeClock())
    with pytest.raises(NoUpstreamKey):
        empty.choose()


def test_keys_with_recent_errors_stay_in_the_rotation() -> None:
    # Avoiding them would never let a success reset their count; three in a row cool them instead.
    pool = make_pool(FakeClock(), key("healthy"), key("erring", consecutive_errors=2))
    assert picks(pool, 20) == {"healthy": 10, "erring": 10}


async def test_a_full_key_is_tried_last_until_its_hint_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    pool = make_pool(clock, key("a", max_in_flight=1), key("b", max_in_flight=5))
    full = {"a"}
    tried: list[str] = []

    async def take_slot(session: object, key_id: str, now: dt.datetime) -> bool:
        tried.append(key_id)
        return key_id not in full

    monkeypatch.setattr(repo, "take_slot", take_slot)
    service = PoolService(None, MATERIAL, clock.now, pool)  # type: ignore[arg-type]  # the repository is faked
    assert (await service.take_slot(None, pool.get("a"))).id == "b"  # type: ignore[arg-type]
    assert tried == ["a", "b"]
    # While the hint holds, "a" is not chosen first, whatever the weights say.
    assert set(picks(pool, 10)) == {"b"}
    clock.advance(pool.policy.full_hint_s)
    assert set(picks(pool, 10)) == {"a", "b"}
    # A task of "a" ending in this process clears the hint at once.
    pool._full_until["a"] = clock.now() + dt.timedelta(seconds=60)
    monkeypatch.setattr(repo, "release_slot", _noop)
    await service.release_slot(None, "a")  # type: ignore[arg-type]
    assert set(picks(pool, 10)) == {"a", "b"}


async def test_every_key_full_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = make_pool(FakeClock(), key("a", max_in_flight=1), key("b", max_in_flight=1))

    async def take_slot(session: object, key_id: str, now: dt.datetime) -> bool:
        return False

    monkeypatch.setattr(repo, "take_slot", take_slot)
    service = PoolService(None, MATERIAL, FakeClock().now, pool)  # type: ignore[arg-type]  # the repository is faked
    with pytest.raises(NoUpstreamKey) as info:
        await service.take_slot(None, pool.choose())  # type: ignore[arg-type]
    assert info.value.headers["Retry-After"] == str(pool.policy.full_retry_after_s)


def test_a_key_never_shows_its_secret() -> None:
    pool_key = key("a")
    assert "sk-secret-a" not in repr(pool_key) and "sk-secret-a" not in str(pool_key)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 2 ", 2.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("Thu, 01 Jan 2026 00:00:30 GMT", 30.0),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_retry_after(header, now) == seconds


async def _noop(*args: object) -> None:
    return None
