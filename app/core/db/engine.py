"""Engine and session factory (PostgreSQL through asyncpg).

Every engine hides statement parameters in its errors (`hide_parameters=True`, plus the values PostgreSQL and asyncpg
echo in their own messages: a failing statement's message, and so any traceback logged of it, never carries a prompt
or a key hash), and reports to the database's outage tracker
(app/core/outage.py) when a statement succeeds again after an outage, which ends it with one log line.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.core import outage
from app.core.db import continuity, driver
from app.core.db.errors import redact_in_place

# A connect attempt to an unreachable PostgreSQL (a network partition swallowing packets) fails after this long
# instead of asyncpg's 60 s; a refused or reset connection fails at once anyway.
PG_CONNECT_TIMEOUT_S = 10.0
_STARTED_DURING_OUTAGE = "gw_started_during_outage"
_RETURNED_AT = "gw_returned_at"
PING_AFTER_IDLE_S = 5.0


def create_engine(url: str, *, pool_size: int = 20, tracker: outage.OutageTracker | None = None) -> AsyncEngine:
    """Build the async engine for a PostgreSQL URL (postgresql+asyncpg://...)."""
    # pool_size is the per-process connection cap: overflow connections would be closed on return and reopened on
    # the next burst (measured: a fifth of the throughput lost to that churn at concurrency 32). A connection that
    # dies in use invalidates the whole pool, so no stale connection outlives an outage; one that sat idle is pinged
    # before it is handed out (_ping_when_idle), which replaces what a database restart killed meanwhile without a
    # ping per checkout on a busy pool.
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        hide_parameters=True,
        connect_args={"timeout": PG_CONNECT_TIMEOUT_S},
    )
    tracker = tracker or outage.tracker(outage.DATABASE)
    watched = continuity.of(engine)  # a lost connection or another database behind the URL: caches start over
    lost = _ping_when_idle(engine, on_lost=watched.lost)
    _report_recovery(engine, tracker)
    _redact_errors(engine)
    # The same for the statements sent on the driver (app/core/db/driver.py), whose lost connection has the pool's
    # others pinged as SQLAlchemy's has them replaced.
    driver.observe(engine, tracker=tracker, lost=lost)
    return engine


def _ping_when_idle(
    engine: AsyncEngine, idle_s: float = PING_AFTER_IDLE_S, on_lost: Callable[[], None] | None = None
) -> Callable[[], None]:
    """pool_pre_ping for connections idle longer than `idle_s` only, and for those returned before the last
    connection the driver found lost; answers the function that notes such a loss.

    SQLAlchemy's pre-ping costs a round trip (three on asyncpg: BEGIN, ping, ROLLBACK) on every checkout, which was
    a third of a warm status call's database work. A connection in steady use proves itself; one that sat idle may
    have been cut (a restart, a failover, a proxy's idle timeout), so it is pinged, and replaced when the ping fails
    (a DisconnectionError makes the pool retry the checkout with a new connection). A connection lost under
    SQLAlchemy invalidates the whole pool; one lost under a statement sent on the driver cannot (that is a private
    API), so the pool's older connections are pinged instead: the dead are replaced, the live kept. `on_lost` hears
    of such a loss too (the engine's continuity: app/core/db/continuity.py).
    """
    lost_at = -math.inf  # monotonic time of the last loss the driver saw

    def mark_lost() -> None:
        nonlocal lost_at
        lost_at = time.monotonic()
        if on_lost is not None:
            on_lost()

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED_AT)
        if returned is None or (time.monotonic() - returned < idle_s and returned > lost_at):
            return  # new, or in steady use since the last loss
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as e:
            raise DisconnectionError(f"pooled connection failed its ping: {type(e).__name__}") from e

    return mark_lost


def _redact_errors(engine: AsyncEngine) -> None:
    """hide_parameters drops SQLAlchemy's `[parameters: ...]`; this drops what the server and the driver echo of
    them in their own messages (PostgreSQL's `DETAIL: Key (key_hash)=(...)`, asyncpg's rejected arguments)."""

    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        if context.sqlalchemy_exception is not None:
            redact_in_place(context.sqlalchemy_exception)
        redact_in_place(context.original_exception)


def _report_recovery(engine: AsyncEngine, tracker: outage.OutageTracker) -> None:
    """End the tracker's outage when a statement *started after it began* succeeds: the one place a statement's
    success reaches the outage tracker, whatever ran it (a session, a connection, the autocommit engine).

    A statement that was sent before the outage was noticed and answered just in time proves nothing, so the start
    is stamped on the connection (only while an outage is on: nothing is done per statement otherwise).
    """

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _before(conn: Any, _cursor: Any, _statement: Any, _params: Any, _context: Any, _many: Any) -> None:
        started = tracker.operation_started()
        if started is not None:
            conn.info[_STARTED_DURING_OUTAGE] = started

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _after(conn: Any, _cursor: Any, _statement: Any, _params: Any, _context: Any, _many: Any) -> None:
        if tracker.is_down:
            tracker.operation_succeeded(conn.info.pop(_STARTED_DURING_OUTAGE, None))


def autocommit_engine(engine: AsyncEngine) -> AsyncEngine:
    """`engine` for work that is one statement: each statement on its connections commits on its own (no BEGIN, no
    COMMIT: one round trip instead of three). The same pool, hooks and error translation as `engine` (idle ping,
    redaction, outage recovery, tracing): an execution option of it, not another engine. Used as
    `async with autocommit.connect() as connection: await connection.execute(statement, params)`."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


async def reads_only(session: AsyncSession) -> None:
    """Declare, before its first statement, that a session only reads: its statements then run in autocommit, so a
    single-statement read is one round trip instead of three (no BEGIN, no ROLLBACK)."""
    await autocommit(session)


async def autocommit(session: AsyncSession) -> None:
    """Each statement of the session commits on its own (no BEGIN, no COMMIT), for work that is one statement."""
    await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


@asynccontextmanager
async def one_statement(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session for work that is a single write statement, in autocommit (one round trip instead of three: no
    BEGIN, no COMMIT)."""
    async with sessions() as session:
        await autocommit(session)
        yield session


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
