"""Single statements sent straight to asyncpg, on a connection of the engine's pool: the two writes of every submit
(the admission and the upstream's answer), where a session and SQLAlchemy's execution layer cost twice
the statement's own client work (2026-11-29, in-process: 400 us of CPU per autocommit statement through a session,
130 us this way).

What the session path gives, kept:
- the pool: its size and checkout timeout, the idle ping (engine.py's checkout hook), the invalidation of a
  connection found broken, and a connection cut mid-statement by a cancellation is discarded, not reused;
- SQLAlchemy's bind processing: each statement is compiled once for the dialect (its `$n` text and casts) and its
  parameters go through the same bind processors, in the compiled order;
- errors: asyncpg's exception is translated as the dialect translates it and wrapped as SQLAlchemy wraps it
  (`DBAPIError.instance`: IntegrityError for a unique violation, `connection_invalidated` for a lost connection),
  then redacted like every statement's error (errors.redact_in_place); callers and the outage handling see what a
  session would have raised;
- outage recovery: a statement started during a database outage that succeeds ends it (engine.py's hooks).

What it does not give is the engine's per-statement event hooks, so an engine traced by OpenTelemetry (a span per
statement) is `declined` (app/core/tracing.py): its statements go through a session, where the instrumentation sees
them.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.util import greenlet_spawn

from app.core.db.engine import one_statement, recovery_tracker
from app.core.db.errors import redact_in_place

_declined: weakref.WeakSet[Engine] = weakref.WeakSet()
_MAX_STATEMENTS = 256  # compiled statements kept per engine: the callers' set is small and fixed


def decline(engine: AsyncEngine) -> None:
    """Send this engine's statements through sessions from now on (its statements are traced)."""
    _declined.add(engine.sync_engine)


class CompiledStatement:
    """A text statement compiled once for a dialect: its SQL and, per position, the parameter's name, processor
    and default."""

    __slots__ = ("_binds", "sql")

    def __init__(self, clause: TextClause, dialect: Dialect) -> None:
        compiled = clause.compile(dialect=dialect)
        self.sql = compiled.string
        binds = compiled.binds
        self._binds: list[tuple[str, Callable[[Any], Any] | None, Any]] = []
        for name in compiled.positiontup or ():
            bind = binds[name]
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            self._binds.append((name, processor, bind.value))

    def args(self, params: dict[str, Any]) -> list[Any]:
        args = []
        for name, processor, default in self._binds:
            value = params.get(name, default)
            args.append(processor(value) if processor is not None and value is not None else value)
        return args


class Statements:
    """Single-statement reads and writes in autocommit: `scalar` (the first column of the first row) and `rowcount`
    (rows an UPDATE or DELETE touched). Straight to asyncpg unless the engine is declined; in a session (in
    autocommit too) otherwise."""

    def __init__(self, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._engine = engine
        self._sync_engine = engine.sync_engine
        self._sessions = sessions
        self._dialect = engine.dialect
        self._tracker = recovery_tracker(engine)
        self._compiled: dict[TextClause, CompiledStatement] = {}

    @property
    def direct(self) -> bool:
        return self._sync_engine not in _declined

    async def scalar(self, clause: TextClause, params: dict[str, Any]) -> Any:
        if self.direct:
            return await self._run(clause, params, _fetchval)
        async with one_statement(self._sessions) as session:
            return (await session.execute(clause, params)).scalar()

    async def rowcount(self, clause: TextClause, params: dict[str, Any]) -> int:
        if self.direct:
            return int(await self._run(clause, params, _execute))
        async with one_statement(self._sessions) as session:
            return int((await session.execute(clause, params)).rowcount)  # type: ignore[attr-defined]

    def compiled(self, clause: TextClause) -> CompiledStatement:
        found = self._compiled.get(clause)
        if found is None:
            if len(self._compiled) >= _MAX_STATEMENTS:
                self._compiled.clear()
            found = self._compiled[clause] = CompiledStatement(clause, self._dialect)
        return found

    async def _run(self, clause: TextClause, params: dict[str, Any], call: _Call) -> Any:
        statement = self.compiled(clause)
        args = statement.args(params)
        tracker = self._tracker
        pooled = await self._engine.raw_connection()
        try:
            started = tracker.operation_started() if tracker is not None else None
            try:
                result = await call(pooled.driver_connection, statement.sql, args)
            except Exception as error:
                translated, wrapped = self._wrapped(pooled, statement.sql, error)
                if wrapped is error:
                    raise
                raise wrapped from (error if wrapped is translated else translated)
            except BaseException:  # cancelled mid-statement: what the connection is doing now is unknown
                pooled.invalidate()
                raise
            if started is not None and tracker is not None:
                tracker.operation_succeeded(started)
            return result
        finally:
            if pooled.is_valid:
                await greenlet_spawn(pooled.close)
            else:
                pooled.close()  # nothing to reset on a discarded connection: no I/O

    def _wrapped(
        self, pooled: PoolProxiedConnection, sql: str, error: Exception
    ) -> tuple[BaseException, BaseException]:
        """`error` as the dialect translates it, and as a session would have raised it (see the module's
        docstring)."""
        dialect = self._dialect
        adapted: Any = pooled.dbapi_connection
        translated: BaseException = error
        try:
            adapted._handle_exception(error)  # the dialect's own translation; it always raises
        except Exception as e:
            translated = e
        dbapi = dialect.loaded_dbapi
        invalidated = isinstance(translated, dbapi.Error) and dialect.is_disconnect(translated, adapted, None)
        redact_in_place(error)
        if invalidated:
            pooled.invalidate(translated)
        if not isinstance(translated, dbapi.Error):
            return translated, translated
        redact_in_place(translated)
        wrapped = sa_exc.DBAPIError.instance(
            sql,
            None,
            translated,
            dbapi.Error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=dialect,
        )
        redact_in_place(wrapped)
        return translated, wrapped


_Call = Callable[[Any, str, list[Any]], Awaitable[Any]]


async def _fetchval(connection: Any, sql: str, args: list[Any]) -> Any:
    return await connection.fetchval(sql, *args)


async def _execute(connection: Any, sql: str, args: list[Any]) -> int:
    status: str = await connection.execute(sql, *args)  # "UPDATE 1"
    return int(status.rsplit(" ", 1)[-1])
