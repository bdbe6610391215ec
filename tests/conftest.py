"""Suite-wide fixtures: one migrated SQLite and one migrated PostgreSQL database per worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.fixtures.databases import (
    create_postgres_database,
    create_sqlite_database,
    drop_postgres_database,
    migrated,
    postgres_server_url,
    truncate_all,
)
from tests.fixtures.gateway import Harness, running_gateway
from tests.fixtures.loop_guard import install as install_loop_guard

install_loop_guard()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    return postgres_server_url()


@pytest.fixture(scope="session")
def sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated(create_sqlite_database(tmp_path_factory.mktemp("sqlite")))


@pytest.fixture(scope="session")
def postgres_database(postgres_server: str) -> Iterator[str]:
    url = migrated(create_postgres_database(postgres_server))
    yield url
    drop_postgres_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated, emptied database of each kind; tests using it run once per backend."""
    url: str = request.getfixturevalue(f"{request.param}_database")
    truncate_all(url)
    return url


@pytest.fixture
async def gw(database_url: str) -> AsyncIterator[Harness]:
    async with running_gateway(database_url) as harness:
        yield harness


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
