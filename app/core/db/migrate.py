"""Run Alembic programmatically (the `migrate` command, zero-config start-up, tests)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config

from app.core.errors import SettingsError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parents[3]


class DatabaseNotMigrated(SettingsError):
    """The database does not carry the schema this code expects."""

    def __init__(self) -> None:
        super().__init__("The database is not migrated: run `seedream-gateway migrate` first.")


def alembic_config(database_url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database to `revision`; must be called outside a running event loop."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


@functools.cache
def head_revisions() -> frozenset[str]:
    """The migrations' head revision(s), read from the scripts once per process."""
    from alembic.script import ScriptDirectory

    return frozenset(ScriptDirectory.from_config(alembic_config("")).get_heads())


async def applied_revisions(engine: AsyncEngine) -> frozenset[str]:
    """The revisions the database carries (Alembic's `alembic_version`), in one autocommit statement. Raises what
    the database raises (ProgrammingError when it was never migrated)."""
    from sqlalchemy import text

    from app.core.db.engine import autocommit_engine

    async with autocommit_engine(engine).connect() as conn:
        return frozenset((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())


async def is_at_head(database_url: str) -> bool:
    """Whether the database carries exactly the migrations' head revision(s)."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from app.core.db.engine import create_engine

    engine = create_engine(database_url, pool_size=1)
    try:
        current = await applied_revisions(engine)
    except (OperationalError, ProgrammingError):  # no alembic_version table: never migrated
        current = frozenset()
    finally:
        await engine.dispose()
    return current == head_revisions()
