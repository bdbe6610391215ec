"""Single statements on a connection of the autocommit engine (app/core/db/engine.autocommit_engine), sent the two
ways the gateway sends them: through SQLAlchemy (`connection.execute`: every such statement but the submit's two)
and on the driver's connection (app/core/db/driver.Statement: the submit's two). Each test runs both ways and expects
the same: each statement commits on its own with the same bind processing, an outage ends with the first statement
started after it, and the errors are SQLAlchemy's (a unique violation, a refusal raised by the database, a lost
connection), redacted, with the pool kept healthy after a failure or a cancellation, and no dead connection handed out
after a lost one."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from sqlalchemy import JSON, TextClause, bindparam, event, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core import outage
from app.core.db import driver
from app.core.db.base import UTCDateTime
from app.core.db.engine import autocommit_engine, create_engine
from app.core.db.errors import is_database_unavailable, redacted_traceback

WAYS = ["sqlalchemy", "driver"]


@dataclass
class Scratch:
    engine: AsyncEngine
    autocommit: AsyncEngine
    table: str
    tracker: outage.OutageTracker
    way: str

    async def scalar(self, statement: TextClause, params: dict[str, Any] | None = None) -> Any:
        async with self.autocommit.connect() as connection:
            if self.way == "driver":
                return await driver.Statement(statement).scalar(connection, params or {})
            return (await connection.execute(statement, params or {})).scalar()

    async def rowcount(self, statement: TextClause, params: dict[str, Any] | None = None) -> int:
        async with self.autocommit.connect() as connection:
            if self.way == "driver":
                return await driver.Statement(statement).rowcount(connection, params or {})
            return (await connection.execute(statement, params or {})).rowcount


def driver_error(error: BaseException) -> BaseException:
    """asyncpg's own error in what SQLAlchemy raised: its `orig` (the driver way), or what that wraps (SQLAlchemy's
    asyncpg adapter)."""
    orig = getattr(error, "orig", None)
    assert isinstance(orig, BaseException), error
    return orig if isinstance(orig, asyncpg.PostgresError) else orig.__cause__  # type: ignore[return-value]


@pytest.fixture(params=WAYS)
async def pg(postgres_database: str, request: pytest.FixtureRequest) -> AsyncIterator[Scratch]:
    """A fresh engine (one pooled connection, so a test knows which connection a statement used) and a table."""
    tracker = outage.OutageTracker("database", logger=logging.getLogger("tests.single"))
    engine = create_engine(postgres_database, pool_size=1, tracker=tracker)
    table = f"single_{uuid.uuid4().hex[:12]}"
    async with engine.begin() as conn:
        await conn.execute(
            text(f"CREATE TABLE {table} (id VARCHAR(64) PRIMARY KEY, at TIMESTAMP WITH TIME ZONE, body JSON)")
        )
    try:
        yield Scratch(engine, autocommit_engine(engine), table, tracker, request.param)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {table}"))
        await engine.dispose()


def _insert(table: str) -> TextClause:
    return text(f"INSERT INTO {table} (id, at, body) VALUES (:id, :at, :body) RETURNING id").bindparams(
        bindparam("at", type_=UTCDateTime()), bindparam("body", type_=JSON())
    )


async def test_each_statement_commits_on_its_own_with_the_same_bind_processing(pg: Scratch) -> None:
    at = dt.datetime(2026, 11, 29, 1, 2, 3, 456000, tzinfo=dt.UTC)
    body = {"prompt": 'a "quoted" é', "n": [1, 2]}
    insert = _insert(pg.table)
    assert await pg.scalar(insert, {"id": "autocommit", "at": at, "body": body}) == "autocommit"  # no commit()
    async with pg.engine.begin() as conn:
        await conn.execute(insert, {"id": "transaction", "at": at, "body": body})
        read = text(f"SELECT id, at, body FROM {pg.table} ORDER BY id").columns(at=UTCDateTime(), body=JSON())
        rows = (await conn.execute(read)).all()
    assert [(row.at, row.body) for row in rows] == [(at, body), (at, body)]  # what each way wrote reads the same
    assert await pg.rowcount(text(f"UPDATE {pg.table} SET body = NULL")) == 2
    assert await pg.rowcount(text(f"DELETE FROM {pg.table} WHERE id = :id"), {"id": "x"}) == 0


async def test_tracing_sees_each_statement(pg: Scratch) -> None:
    """What tracing listens to: the engine's statement hook (SQLAlchemy), the span given to `driver.observe` (the
    driver way, registered by app/core/tracing.py next to the engine's instrumentation)."""
    seen: list[str] = []
    if pg.way == "driver":

        @contextmanager
        def span(sql: str) -> Iterator[None]:
            yield
            seen.append(sql)

        driver.observe(pg.autocommit, span=span)
    else:
        event.listen(pg.engine.sync_engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    assert await pg.scalar(text("SELECT 2")) == 2
    assert seen == ["SELECT 2"]


async def test_a_unique_violation_is_sqlalchemy_s_integrity_error_without_the_value(pg: Scratch) -> None:
    insert = _insert(pg.table)
    params = {"id": "secret-value-123", "at": None, "body": None}
    await pg.scalar(insert, params)
    with pytest.raises(IntegrityError) as caught:
        await pg.scalar(insert, params)
    assert isinstance(driver_error(caught.value), asyncpg.UniqueViolationError)
    assert "secret-value-123" not in redacted_traceback(caught.value)
    assert "secret-value-123" not in str(caught.value)  # redacted in place by the engine's handle_error hook
    assert not is_database_unavailable(caught.value)
    assert await pg.scalar(text("SELECT 1")) == 1  # the connection is still good


async def test_an_error_raised_by_the_database_keeps_its_sqlstate_and_detail(pg: Scratch) -> None:
    """What admission reads of a refused reservation (gateway_refuse_admission raises GW001 with the periods)."""
    refuse = text("SELECT gateway_refuse_admission(:periods)")
    with pytest.raises(DBAPIError) as caught:
        await pg.scalar(refuse, {"periods": "day,month"})
    assert getattr(caught.value.orig, "sqlstate", None) == "GW001"
    assert getattr(driver_error(caught.value), "detail", None) == "day,month"
    assert not is_database_unavailable(caught.value)


async def _terminate(engine: AsyncEngine, pids: list[int]) -> None:
    """Terminate these backends and wait until they are gone: their pooled connections are closed at the other end."""
    killer = await asyncpg.connect(engine.url.render_as_string(hide_password=False).replace("+asyncpg", ""))
    try:
        assert all([await killer.fetchval("SELECT pg_terminate_backend($1)", pid) for pid in pids])
        for _ in range(200):
            if not await killer.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids):
                break
            await asyncio.sleep(0.05)
    finally:
        await killer.close()


async def test_a_lost_connection_is_invalidated_and_the_next_statement_gets_a_new_one(pg: Scratch) -> None:
    pid = await pg.scalar(text("SELECT pg_backend_pid()"))
    await _terminate(pg.engine, [pid])
    with pytest.raises(DBAPIError) as caught:
        await pg.scalar(text("SELECT pg_backend_pid()"))
    assert caught.value.connection_invalidated
    assert is_database_unavailable(caught.value)  # answered 503
    assert await pg.scalar(text("SELECT pg_backend_pid()")) != pid


async def test_a_lost_connection_has_the_pool_s_other_connections_checked_before_they_are_used(pg: Scratch) -> None:
    """A connection found dead means the database may have restarted: the pool's other connections, as old, are not
    handed out untried (SQLAlchemy invalidates its pool; the driver way has them pinged), so one statement fails, not
    one per pooled connection."""
    engine = create_engine(pg.engine.url.render_as_string(hide_password=False), pool_size=3, tracker=pg.tracker)
    scratch = Scratch(engine, autocommit_engine(engine), pg.table, pg.tracker, pg.way)
    try:
        # Three connections in the pool, each with a backend of its own.
        pids = await asyncio.gather(
            *(scratch.scalar(text("SELECT pg_backend_pid() FROM pg_sleep(0.2)")) for _ in "abc")
        )
        assert len(set(pids)) == 3
        await _terminate(engine, pids)
        with pytest.raises(DBAPIError) as caught:
            await scratch.scalar(text("SELECT pg_backend_pid()"))
        assert caught.value.connection_invalidated
        for _ in range(3):  # every other pooled connection is replaced, not handed out dead
            assert await scratch.scalar(text("SELECT pg_backend_pid()")) not in pids
    finally:
        await engine.dispose()


async def test_a_statement_cancelled_midway_leaves_no_busy_connection_in_the_pool(pg: Scratch) -> None:
    pid = await pg.scalar(text("SELECT pg_backend_pid()"))
    sleeping = asyncio.create_task(pg.scalar(text("SELECT pg_sleep(30)")))
    await asyncio.sleep(0.3)
    sleeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeping
    # The pool's only connection was discarded: the next statement runs at once on a new one.
    assert await asyncio.wait_for(pg.scalar(text("SELECT pg_backend_pid()")), 20) != pid


async def test_a_statement_started_during_an_outage_ends_it(pg: Scratch) -> None:
    await pg.scalar(text("SELECT 1"))
    pg.tracker.failed("simulated")
    await asyncio.sleep(0)
    assert pg.tracker.is_down
    await pg.scalar(text("SELECT 1"))
    assert not pg.tracker.is_down


async def test_a_failed_statement_leaves_its_connection_in_the_pool_when_it_is_still_good(pg: Scratch) -> None:
    pid = await pg.scalar(text("SELECT pg_backend_pid()"))
    with pytest.raises(DBAPIError) as caught:
        await pg.scalar(text("SELECT 1 / 0"))
    assert not caught.value.connection_invalidated and not is_database_unavailable(caught.value)
    assert await pg.scalar(text("SELECT pg_backend_pid()")) == pid


async def test_a_session_s_statements_share_the_pool_and_its_rules(pg: Scratch) -> None:
    """The autocommit engine is an execution option of the engine, not a second pool: with one pooled connection,
    a statement waits for the connection a transaction holds (and reuses it once it is back)."""
    async with pg.engine.connect() as held:
        pid = (await held.execute(text("SELECT pg_backend_pid()"))).scalar()
        waiting = asyncio.create_task(pg.scalar(text("SELECT pg_backend_pid()")))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await held.rollback()
    assert await asyncio.wait_for(waiting, 20) == pid
