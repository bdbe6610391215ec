"""Suite-wide fixtures: one migrated PostgreSQL database per worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.fixtures.databases import (
    create_postgres_database,
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
def postgres_database(postgres_server: str) -> Iterator[str]:
    url = migrated(create_postgres_database(postgres_server))
    yield url
    drop_postgres_database(url)


@pytest.fixture
def database_url(postgres_database: str) -> str:
    """The worker's migrated database, emptied."""
    truncate_all(postgres_database)
    return postgres_database


@pytest.fixture
async def gw(database_url: str) -> AsyncIterator[Harness]:
    async with running_gateway(database_url) as harness:
        yield harness


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
