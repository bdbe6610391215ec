"""Statements sent straight to asyncpg (app/core/db/direct.py) behave as the same statements through a session: the
same values written, the same exceptions raised (a unique violation, a refusal raised by the database, a lost
connection), the pool kept healthy after a failure or a cancellation, an outage ended, and a traced engine's
statements left to the session where its listeners see them."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from sqlalchemy import JSON, bindparam, event, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core import outage
from app.core.db import direct
from app.core.db.base import UTCDateTime
from app.core.db.direct import Statements
from app.core.db.engine import create_engine, create_session_factory
from app.core.db.errors import is_database_unavailable, redacted_traceback


@dataclass
class Scratch:
    engine: AsyncEngine
    statements: Statements
    table: str
    tracker: outage.OutageTracker


@contextlib.asynccontextmanager
async def scratch_on(database_url: str) -> AsyncIterator[Scratch]:
    """A fresh engine (one pooled connection, so a test knows which connection a statement used) and a table."""
    tracker = outage.OutageTracker("database", logger=logging.getLogger("tests.direct"))
    engine = create_engine(database_url, pool_size=1, tracker=tracker)
    table = f"direct_{uuid.uuid4().hex[:12]}"
    async with engine.begin() as conn:
        await conn.execute(
            text(f"CREATE TABLE {table} (id VARCHAR(64) PRIMARY KEY, at TIMESTAMP WITH TIME ZONE, body JSON)")
        )
    try:
        yield Scratch(engine, Statements(engine, create_session_factory(engine)), table, tracker)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {table}"))
        await engine.dispose()


@pytest.fixture
async def scratch(database_url: str) -> AsyncIterator[Scratch]:
    """Straight to asyncpg."""
    async with scratch_on(database_url) as made:
        yield made


@pytest.fixture
async def pg(postgres_database: str) -> AsyncIterator[Scratch]:
    async with scratch_on(postgres_database) as made:
        yield made


def _insert(table: str):  # type: ignore[no-untyped-def]
    return text(f"INSERT INTO {table} (id, at, body) VALUES (:id, :at, :body) RETURNING id").bindparams(
        bindparam("at", type_=UTCDateTime()), bindparam("body", type_=JSON())
    )


async def test_values_go_through_the_same_bind_processing_as_a_session(scratch: Scratch) -> None:
    at = dt.datetime(2026, 11, 29, 1, 2, 3, 456000, tzinfo=dt.UTC)
    body = {"prompt": 'a "quoted" é', "n": [1, 2]}
    insert = _insert(scratch.table)
    assert await scratch.statements.scalar(insert, {"id": "direct", "at": at, "body": body}) == "direct"
    async with scratch.engine.begin() as conn:
        await conn.execute(insert, {"id": "session", "at": at, "body": body})
        read = text(f"SELECT id, at, body FROM {scratch.table} ORDER BY id").columns(at=UTCDateTime(), body=JSON())
        rows = (await conn.execute(read)).all()
    assert [(row.at, row.body) for row in rows] == [(at, body), (at, body)]  # what each path wrote reads the same
    assert await scratch.statements.rowcount(text(f"UPDATE {scratch.table} SET body = NULL"), {}) == 2
    assert await scratch.statements.rowcount(text(f"DELETE FROM {scratch.table} WHERE id = :id"), {"id": "x"}) == 0


async def test_the_direct_path_skips_the_engine_s_statement_hooks_unless_declined(pg: Scratch) -> None:
    seen: list[str] = []
    event.listen(pg.engine.sync_engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    assert pg.statements.direct
    await pg.statements.scalar(text("SELECT 1"), {})
    assert seen == []  # straight to the driver
    direct.decline(pg.engine)  # what tracing does to the engine it instruments
    assert not pg.statements.direct
    assert await pg.statements.scalar(text("SELECT 2"), {}) == 2
    assert seen == ["SELECT 2"]


async def test_a_unique_violation_is_sqlalchemy_s_integrity_error_without_the_value(pg: Scratch) -> None:
    insert = _insert(pg.table)
    params = {"id": "secret-value-123", "at": None, "body": None}
    await pg.statements.scalar(insert, params)
    with pytest.raises(IntegrityError) as caught:
        await pg.statements.scalar(insert, params)
    assert isinstance(caught.value.orig.__cause__, asyncpg.UniqueViolationError)  # type: ignore[union-attr]
    assert "secret-value-123" not in redacted_traceback(caught.value)
    assert not is_database_unavailable(caught.value)
    assert await pg.statements.scalar(text("SELECT 1"), {}) == 1  # the connection is still good


async def test_an_error_raised_by_the_database_keeps_its_sqlstate_and_detail(pg: Scratch) -> None:
    """What admission reads of a refused reservation (gateway_refuse_admission raises GW001 with the periods)."""
    refuse = text("SELECT gateway_refuse_admission(:periods)")
    with pytest.raises(DBAPIError) as caught:
        await pg.statements.scalar(refuse, {"periods": "day,month"})
    assert getattr(caught.value.orig, "sqlstate", None) == "GW001"
    assert caught.value.orig.__cause__.detail == "day,month"  # type: ignore[union-attr]


async def test_a_lost_connection_is_invalidated_and_the_next_statement_gets_a_new_one(pg: Scratch) -> None:
    pid = await pg.statements.scalar(text("SELECT pg_backend_pid()"), {})
    killer = await asyncpg.connect(pg.engine.url.render_as_string(hide_password=False).replace("+asyncpg", ""))
    try:
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
        for _ in range(200):  # until the backend is gone, so the pooled connection is closed at its other end
            if not await killer.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                break
            await asyncio.sleep(0.05)
    finally:
        await killer.close()
    with pytest.raises(DBAPIError) as caught:
        await pg.statements.scalar(text("SELECT pg_backend_pid()"), {})
    assert caught.value.connection_invalidated
    assert is_database_unavailable(caught.value)  # answered 503, as through a session
    assert await pg.statements.scalar(text("SELECT pg_backend_pid()"), {}) != pid


async def test_a_statement_cancelled_midway_leaves_no_busy_connection_in_the_pool(pg: Scratch) -> None:
    pid = await pg.statements.scalar(text("SELECT pg_backend_pid()"), {})
    sleeping = asyncio.create_task(pg.statements.scalar(text("SELECT pg_sleep(30)"), {}))
    await asyncio.sleep(0.3)
    sleeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeping
    # The pool's only connection was discarded: the next statement runs at once on a new one.
    assert await asyncio.wait_for(pg.statements.scalar(text("SELECT pg_backend_pid()"), {}), 20) != pid


async def test_a_statement_started_during_an_outage_ends_it(pg: Scratch) -> None:
    await pg.statements.scalar(text("SELECT 1"), {})
    pg.tracker.failed("simulated")
    await asyncio.sleep(0)
    assert pg.tracker.is_down
    await pg.statements.scalar(text("SELECT 1"), {})
    assert not pg.tracker.is_down
