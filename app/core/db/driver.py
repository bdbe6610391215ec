"""Statements sent on the driver's own connection, past SQLAlchemy's execution layer: the submit's two writes (the
admission, app/tasks/admission.py, and the upstream's answer, app/tasks/repository.apply_update_to), and nothing
else. Each is the only path for its statement.

Why: SQLAlchemy's execution layer (execution context, cursor adaptation, result object, the greenlet hop) costs
+263 to +384 µs of CPU per submit against this path (1.5x its CPU), a third of the gateway's own CPU per submit, and
0.82x throughput at concurrency 16 (bench/RESULTS.md, "issue 20: the submit's two statements on the driver";
bench/single_statements.py).

What stays SQLAlchemy's, on public APIs only:
- the pool and its rules: the connection is an `AsyncConnection` of the autocommit engine (pool size, idle ping,
  invalidation), and the statement goes to its `get_raw_connection().driver_connection`;
- the SQL and the bind processing: the `TextClause` is compiled once by SQLAlchemy's compiler for the connection's
  dialect (`ClauseElement.compile`, `positiontup`, `binds`), each value through its type's `bind_processor`;
- the errors: SQLAlchemy's classes (`IntegrityError` for a constraint, `DBAPIError` otherwise, the driver's error as
  `orig` with its `sqlstate` and `detail`), redacted as the engine's `handle_error` hook redacts; a lost or cancelled
  connection is invalidated (`AsyncConnection.invalidate`) and raised with `connection_invalidated=True`, which
  `is_database_unavailable` reads as an outage (503);
- what the engine's statement hooks do: the end of an outage (the engine's tracker, app/core/outage.py) and, with
  tracing on, a span per statement (registered by app/core/tracing.py through `observe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import TextClause
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import Pool

from app.core import outage
from app.core.db.errors import redact_in_place

# SQLSTATE classes and the SQLAlchemy class each is raised as (the classes SQLAlchemy's asyncpg dialect gives them).
_CLASSES: dict[str, type[sa_exc.DBAPIError]] = {
    "23": sa_exc.IntegrityError,
    "42": sa_exc.ProgrammingError,
    "XX": sa_exc.InternalError,
}
# What leaves the connection unusable or in an unknown state: it is invalidated, never handed out again.
_LOST = (asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.InterfaceError, OSError, TimeoutError)

SpanFactory = Callable[[str], AbstractContextManager[Any]]


@dataclass
class _Observers:
    tracker: outage.OutageTracker | None = None
    span: SpanFactory | None = None
    lost: Callable[[], None] | None = None


# By pool: the autocommit engine is an execution option of its engine (app/core/db/engine.py), with the same pool.
_OBSERVERS: weakref.WeakKeyDictionary[Pool, _Observers] = weakref.WeakKeyDictionary()


def observe(
    engine: AsyncEngine,
    *,
    tracker: outage.OutageTracker | None = None,
    span: SpanFactory | None = None,
    lost: Callable[[], None] | None = None,
) -> None:
    """What the engine's statement hooks do, for statements sent here on its connections: `tracker` hears that a
    statement succeeded (the end of an outage), `span(sql)` wraps each statement (tracing), `lost()` hears that a
    connection was found lost (the pool then checks its other connections: app/core/db/engine.py)."""
    observers = _OBSERVERS.setdefault(engine.sync_engine.pool, _Observers())
    if tracker is not None:
        observers.tracker = tracker
    if span is not None:
        observers.span = span
    if lost is not None:
        observers.lost = lost


class Statement:
    """A text statement, compiled once for the dialect of the first connection it runs on, then sent with its
    values (by name, as `connection.execute` takes them) on the driver connection."""

    def __init__(self, clause: TextClause) -> None:
        self.clause = clause
        self._dialect: Dialect | None = None
        self._sql = ""
        self._binds: list[tuple[str, Callable[[Any], Any] | None, Any]] = []

    def _compile(self, dialect: Dialect) -> None:
        if self._dialect is dialect:
            return
        compiled = self.clause.compile(dialect=dialect)
        binds: list[tuple[str, Callable[[Any], Any] | None, Any]] = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            binds.append((name, bind.type.dialect_impl(dialect).bind_processor(dialect), bind.value))
        self._sql, self._binds, self._dialect = compiled.string, binds, dialect

    async def scalar(self, connection: AsyncConnection, params: dict[str, Any]) -> Any:
        """The first column of the first row (`connection.execute(...).scalar()`)."""
        return await self._run(connection, params, scalar=True)

    async def rowcount(self, connection: AsyncConnection, params: dict[str, Any]) -> int:
        """The rows the statement wrote (`connection.execute(...).rowcount`)."""
        status: str = await self._run(connection, params, scalar=False)
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def _run(self, connection: AsyncConnection, params: dict[str, Any], *, scalar: bool) -> Any:
        self._compile(connection.dialect)
        sql = self._sql
        args = []
        for name, processor, default in self._binds:
            value = params.get(name, default)
            args.append(processor(value) if processor is not None and value is not None else value)
        observers = _OBSERVERS.get(connection.sync_engine.pool) or _Observers()
        tracker = observers.tracker
        started = tracker.operation_started() if tracker is not None else None
        raw = (await connection.get_raw_connection()).driver_connection
        assert raw is not None
        try:
            with observers.span(sql) if observers.span is not None else contextlib.nullcontext():
                result = await (raw.fetchval(sql, *args) if scalar else raw.execute(sql, *args))
        except asyncio.CancelledError:
            # Cancelled mid-statement (a client gone, a shutdown): the connection may still be busy with it.
            await _discard(connection, raw)
            raise
        except Exception as e:
            raise await _translated(connection, raw, sql, e, observers) from e
        if tracker is not None and tracker.is_down:
            tracker.operation_succeeded(started)
        return result


async def _discard(connection: AsyncConnection, raw: Any) -> None:
    """Close the driver connection at once and have the pool forget it (the next checkout opens a new one)."""
    raw.terminate()
    with contextlib.suppress(Exception):
        await connection.invalidate()


async def _translated(
    connection: AsyncConnection, raw: Any, sql: str, error: Exception, observers: _Observers
) -> sa_exc.DBAPIError:
    """`error` as SQLAlchemy would raise it (its class by SQLSTATE, the driver's error as `orig`), redacted; a
    connection lost on the way is invalidated, and the error says so (`connection_invalidated`)."""
    lost = isinstance(error, _LOST) or raw.is_closed()
    if lost:
        await _discard(connection, raw)
        if observers.lost is not None:
            observers.lost()
    sqlstate = getattr(error, "sqlstate", None) or ""
    cls = sa_exc.OperationalError if lost else _CLASSES.get(sqlstate[:2], sa_exc.DBAPIError)
    wrapped = cls(sql, None, error, hide_parameters=True, connection_invalidated=lost)
    redact_in_place(wrapped)
    return wrapped
