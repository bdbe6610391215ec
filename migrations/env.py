"""Alembic environment (async template), wired to the gateway's metadata and settings."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

import app.models  # noqa: F401  (registers every table)
from app.core.config import Settings
from app.core.db import embedded
from app.core.db.base import Base, UTCDateTime
from app.core.db.engine import create_engine

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata
MIGRATION_LOCK = 0x5EED_0001  # pg_advisory_xact_lock key held while migrating


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    # Migrations stay static: the app's UTC type is stored as a plain timezone-aware DateTime.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _url() -> str:
    """The URL the caller gave, else GATEWAY_DATABASE_URL, else the embedded PostgreSQL's (started for this run)."""
    url: str | None = config.attributes.get("database_url")
    if url:
        return url
    settings = Settings()
    return settings.database_url or embedded.start(settings.data_dir)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        # Two processes migrating one database at once (`serve` and a CLI command, each migrating the embedded
        # one): the second waits for the first's commit, then finds nothing left to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def run_migrations_online(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online(_url()))  # the URL first: starting the embedded server runs its own loop
