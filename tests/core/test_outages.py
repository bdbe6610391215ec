"""The API while its database is away: 503 `database_unavailable` with Retry-After, one log line when the outage
starts and one when it ends, and back by itself when the database is."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from app.core import outage
from tests.fixtures.databases import create_postgres_database, drop_postgres_database, migrated, truncate_all
from tests.fixtures.gateway import Harness, completed_task, running_gateway, until_fresh
from tests.fixtures.tcp_proxy import CutMode, TcpProxy

RECOVERY_DEADLINE_S = 30.0
OUTAGE_LOGGER = "app.core.outage"


@pytest.fixture(autouse=True)
def fresh_trackers() -> Iterator[None]:
    outage.tracker(outage.DATABASE).reset()
    yield
    outage.tracker(outage.DATABASE).reset()


@pytest.fixture
def clean_postgres(postgres_database: str) -> str:
    truncate_all(postgres_database)
    return postgres_database


@pytest.fixture
def own_postgres(postgres_server: str) -> Iterator[str]:
    """A migrated PostgreSQL database of the test's own (the test drops it)."""
    url = migrated(create_postgres_database(postgres_server, prefix="gw_dropped"))
    yield url
    drop_postgres_database(url)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _requests(gw: Harness, key: str) -> list[httpx.Response]:
    """One of each kind: a submit, a status query, a usage read."""
    headers = _auth(key)
    return [
        await gw.client.post("/v1/images/generations", headers=headers, json={"prompt": "during the outage"}),
        await gw.client.get("/v1/images/generations/task_img_unknown", headers=headers),
        await gw.client.get("/v1/usage", headers=headers),
    ]


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "2"
    error = response.json()["error"]
    assert error["code"] == "database_unavailable"
    assert error["type"] == "api_error"
    assert error["message"]


async def _until_served(gw: Harness, key: str, expected: int = 200) -> None:
    """Poll until the database answers again (the usage read is not 503), within the deadline."""
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while True:
        r = await gw.client.get("/v1/usage", headers=_auth(key))
        if r.status_code != 503:
            assert r.status_code == expected, r.text
            return
        assert time.monotonic() < deadline, "the gateway did not recover"
        await asyncio.sleep(0.1)


async def _until_poller_failed(failures_before: int, extra: int = 2) -> None:
    """Wait (polling) until the background poller also ran into the outage a few times."""
    tracker = outage.tracker(outage.DATABASE)
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while tracker.failures < failures_before + extra:
        assert time.monotonic() < deadline, "the poller did not sweep during the outage"
        await asyncio.sleep(0.05)


def _assert_logged_once(caplog: pytest.LogCaptureFixture, *, ended: bool = True) -> None:
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == OUTAGE_LOGGER]
    expected = [logging.WARNING, logging.INFO] if ended else [logging.WARNING]
    assert [level for level, _ in lines] == expected, "\n".join(message for _, message in lines)
    assert lines[0][1].startswith("database unavailable: ")
    if ended:
        assert lines[1][1].startswith("database available again after ")
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]


@pytest.mark.parametrize("mode", ["refuse", "reset"])
async def test_postgres_cut_then_restored(clean_postgres: str, mode: CutMode, caplog: pytest.LogCaptureFixture) -> None:
    with TcpProxy.for_url(clean_postgres) as proxy:
        async with running_gateway(proxy.url_for(clean_postgres), poll_interval_s=0.05, db_pool_size=5) as gw:
            key = await gw.new_tenant(f"pg-outage-{mode}")
            # Fill the pool: every one of these connections dies with the cut.
            await asyncio.gather(*[gw.client.get("/v1/usage", headers=_auth(key)) for _ in range(10)])
            assert (await _requests(gw, key))[0].status_code == 200
            caplog.set_level(logging.INFO)

            proxy.cut(mode)
            for _ in range(5):
                for response in await _requests(gw, key):
                    _assert_unavailable(response)
            await _until_poller_failed(15)

            proxy.restore()
            await _until_served(gw, key)
            # No stale pooled connection keeps failing: every request after the recovery is served.
            for _ in range(10):
                responses = await asyncio.gather(*[gw.client.get("/v1/usage", headers=_auth(key)) for _ in range(5)])
                assert [r.status_code for r in responses] == [200] * 5
            assert (await _requests(gw, key))[0].status_code == 200
            _assert_logged_once(caplog)


async def test_postgres_database_dropped_then_recreated(own_postgres: str, caplog: pytest.LogCaptureFixture) -> None:
    url = own_postgres
    name = make_url(url).database
    admin_url = make_url(url).set(drivername="postgresql", database="postgres").render_as_string(False)
    async with running_gateway(url) as gw:
        key = await gw.new_tenant("dropped")
        assert (await gw.client.get("/v1/usage", headers=_auth(key))).status_code == 200
        caplog.set_level(logging.INFO)

        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            for _ in range(3):
                for response in await _requests(gw, key):
                    _assert_unavailable(response)
            # The first failure may be a pooled connection the DROP cut; reconnecting then finds no database.
            assert "does not exist" in outage.tracker(outage.DATABASE).latest_reason
            # Caches stopped at the first failure, whether or not the invalidator has read since: a database that
            # comes back within its interval must not meet keys cached from the old one.
            assert not gw.app.state.invalidator.fresh
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        await asyncio.to_thread(migrated, url)
        await _until_served(gw, key, expected=401)  # back, and empty: the tenant went with the old database
        _assert_logged_once(caplog)


async def test_postgres_database_recreated_under_an_idle_gateway(own_postgres: str) -> None:
    """No request sees the database go and no read of the invalidator fails: it is dropped, created again and
    migrated between two reads, and the pool's connections are replaced as the idle ping replaces them. The next read
    meets another database, starts over and drops every cached key: the old database's key is refused, also where a
    warm status answer needs no statement at all."""
    url = own_postgres
    name = make_url(url).database
    admin_url = make_url(url).set(drivername="postgresql", database="postgres").render_as_string(False)
    async with running_gateway(url) as gw:
        invalidator = gw.app.state.invalidator
        await invalidator.stop()  # the reads happen below, when the test says so
        invalidator._interval_s = 3600.0  # and the caches stay trusted however slow this machine is meanwhile
        key = await gw.new_tenant("replaced")
        await until_fresh(gw)
        task_id = await completed_task(gw, key)  # the key and the answer are now cached
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        await asyncio.to_thread(migrated, url)
        await gw.app.state.kernel.engine.dispose()
        for _ in range(5):  # a background loop's connection lost meanwhile makes one read start over once more
            await until_fresh(gw)
            if invalidator.fresh:
                break
        assert invalidator.fresh
        r = await gw.client.get(f"/v1/images/generations/{task_id}", headers=_auth(key))
        assert r.status_code == 401, r.text
        r = await gw.client.get("/v1/usage", headers=_auth(key))
        assert r.status_code == 401, r.text
