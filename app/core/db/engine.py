"""Engine and session factory; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE writes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


def create_engine(url: str, *, pool_size: int = 20) -> AsyncEngine:
    """Build the async engine for a PostgreSQL (asyncpg) or SQLite (aiosqlite) URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            from pathlib import Path

            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    # pool_size is the per-process connection cap: overflow connections would be closed on return and reopened on
    # the next burst (measured: a fifth of the throughput lost to that churn at concurrency 32).
    return create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True)


def _configure_sqlite(engine: AsyncEngine) -> None:
    # Without BEGIN IMMEDIATE, a read lock that upgrades to a write lock fails with "database is locked" under
    # concurrent writers; pysqlite's own transaction handling has to be switched off for that to work.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
