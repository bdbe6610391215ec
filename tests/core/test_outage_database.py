"""Database errors on both backends: no parameter values in messages or logs, and outages told apart from bugs
(on real failures of each driver, not on hand-made exceptions)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import traceback
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.core import outage
from app.core.db.engine import create_engine
from app.core.db.errors import describe, is_database_unavailable, redacted_traceback
from app.core.error_handlers import install_error_handlers
from app.core.ids import new_id
from app.models import Tenant, TenantKey

SECRET_HASH = "f00dfeed" * 8  # a key hash: 64 hex digits
SECRET_PROMPT = "a-secret-prompt-that-must-never-be-logged"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _full_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


async def _insert_duplicate_key(engine: AsyncEngine) -> None:
    """Insert a tenant key whose hash is taken: an IntegrityError naming (on PostgreSQL) the duplicate value."""
    now = dt.datetime.now(dt.UTC)
    tenant_id = new_id("ten_")
    async with engine.begin() as conn:
        await conn.execute(
            Tenant.__table__.insert(),
            {"id": tenant_id, "name": tenant_id, "status": "active", "created_at": now, "updated_at": now},
        )
    rows = [
        {"id": new_id("key_"), "tenant_id": tenant_id, "key_hash": SECRET_HASH, "prefix": "sk-gw-x", "created_at": now}
        for _ in range(2)
    ]
    async with engine.begin() as conn:
        await conn.execute(TenantKey.__table__.insert(), rows[0])
    async with engine.begin() as conn:
        await conn.execute(TenantKey.__table__.insert(), rows[1])


async def test_a_failing_statement_shows_no_parameter_values(engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError) as caught:
        await _insert_duplicate_key(engine)
    message = str(caught.value)
    assert "[SQL parameters hidden due to hide_parameters=True]" in message
    assert "INSERT INTO tenant_keys" in message  # the statement itself is still there to debug with
    for text_ in (message, _full_traceback(caught.value), redacted_traceback(caught.value)):
        assert SECRET_HASH not in text_
    assert not is_database_unavailable(caught.value)  # a refused statement is a bug, not an outage


async def test_postgres_echoes_of_values_are_redacted_too(postgres_database: str) -> None:
    """PostgreSQL and asyncpg put values in their own messages; the engine strips them from the whole chain."""
    engine = create_engine(postgres_database, pool_size=1)
    statements = [
        ("SELECT CAST(CAST(:v AS text) AS integer)", {"v": SECRET_PROMPT}),  # server: invalid input syntax
        ("SELECT CAST(:v AS integer)", {"v": SECRET_PROMPT}),  # asyncpg: invalid input for query argument $1
    ]
    try:
        for statement, params in statements:
            with pytest.raises(DBAPIError) as caught:
                async with engine.connect() as conn:
                    await conn.execute(text(statement), params)
            assert SECRET_PROMPT not in _full_traceback(caught.value), statement
            assert "<redacted>" in str(caught.value)
            assert not is_database_unavailable(caught.value)
    finally:
        await engine.dispose()


async def test_the_error_handler_logs_one_redacted_traceback(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/fail")
    async def fail() -> None:
        await _insert_duplicate_key(engine)

    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.post("/fail")  # ASGITransport raises what the app re-raises: nothing here
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1
    logged = caplog.text
    assert "IntegrityError" in logged and "Traceback" in logged
    assert SECRET_HASH not in logged


# --- what counts as "database unavailable", on real failures ----------------------------------------------------


async def _failure(engine: AsyncEngine, statement: str = "SELECT 1") -> BaseException:
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    except Exception as e:
        return e
    finally:
        await engine.dispose()
    raise AssertionError("the statement did not fail")


async def test_postgres_refused_missing_and_terminated_are_outages(postgres_database: str) -> None:
    url = make_url(postgres_database)
    closed_port = url.difference_update_query(["host"]).set(host="127.0.0.1", port=_free_port())
    refused = await _failure(create_engine(closed_port.render_as_string(False)))
    assert isinstance(refused, ConnectionRefusedError) and is_database_unavailable(refused)
    assert describe(refused).startswith("ConnectionRefusedError: ")

    missing = await _failure(create_engine(url.set(database="gw_no_such_database").render_as_string(False)))
    assert is_database_unavailable(missing)
    assert describe(missing) == 'InvalidCatalogNameError: database "gw_no_such_database" does not exist'

    engine = create_engine(postgres_database, pool_size=1)
    async with engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        admin = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        with pytest.raises(DBAPIError) as terminated:
            await conn.execute(text("SELECT 1"))
    assert terminated.value.connection_invalidated and is_database_unavailable(terminated.value)
    async with engine.connect() as conn:  # the pool replaced the dead connection
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    await engine.dispose()

    bug = await _failure(create_engine(postgres_database), "SELECT * FROM no_such_table")
    assert not is_database_unavailable(bug)


async def test_no_pooled_connection_in_time_is_an_outage(database_url: str) -> None:
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            with pytest.raises(PoolTimeoutError) as caught:
                async with engine.connect():
                    pass
    finally:
        await engine.dispose()
    assert is_database_unavailable(caught.value)


async def test_an_outage_ends_with_the_first_statement_that_started_after_it(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = outage.OutageTracker("database", logger=logging.getLogger("tests.outage"))
    engine = create_engine(database_url, pool_size=2, tracker=tracker)
    caplog.set_level(logging.INFO, "tests.outage")
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            tracker.failed("simulated")
            await asyncio.sleep(0)
            await conn.execute(text("SELECT 1"))  # started after the outage began: it is over
        assert not tracker.is_down
    finally:
        await engine.dispose()
    assert [r.levelno for r in caplog.records if r.name == "tests.outage"] == [logging.WARNING, logging.INFO]
