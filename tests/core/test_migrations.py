"""The ORM metadata and the Alembic migrations never drift, and every migration is reversible."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

import app.models  # noqa: F401
from app.core.db.base import Base
from app.core.db.engine import create_engine
from app.core.db.migrate import downgrade, upgrade
from tests.fixtures.databases import create_postgres_database, drop_postgres_database


@pytest.fixture
def empty_database(postgres_server: str) -> Iterator[str]:
    url = create_postgres_database(postgres_server, prefix="gw_migr")
    yield url
    drop_postgres_database(url)


def _inspect(url: str, fn: Any) -> Any:
    async def run() -> Any:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


def test_migrations_match_the_models(empty_database: str) -> None:
    upgrade(empty_database)
    assert _inspect(empty_database, _diff) == []


def test_migrations_downgrade_to_base_and_up_again(empty_database: str) -> None:
    upgrade(empty_database)
    assert _inspect(empty_database, _tables) == set(Base.metadata.tables)
    downgrade(empty_database, "base")
    assert _inspect(empty_database, _tables) == set()
    upgrade(empty_database)
    assert _inspect(empty_database, _diff) == []
