"""The one seam for SQL that differs by dialect: INSERT ... ON CONFLICT (PostgreSQL and SQLite share its grammar)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def is_postgresql(session: AsyncSession) -> bool:
    """For the few statements PostgreSQL can do in one round trip (data-modifying CTEs) and SQLite cannot."""
    return session.get_bind().dialect.name == "postgresql"


def insert_for(session: AsyncSession, table: Table) -> Any:
    """`insert(table)` of the session's dialect, which offers `on_conflict_do_update/nothing`."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect: {name}")
