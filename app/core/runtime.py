"""The shared kernel every feature is built on: settings, the database, key material and the clock.

Built once per process by the lifespan (or by a CLI command), never at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.clock import Clock, utcnow
from app.core.config import Settings
from app.core.db.engine import create_engine, create_session_factory
from app.core.errors import SettingsError
from app.core.security import KeyMaterial


@dataclass(frozen=True)
class Kernel:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    keys: KeyMaterial
    clock: Clock

    async def aclose(self) -> None:
        await self.engine.dispose()


def build_kernel(settings: Settings, *, clock: Clock = utcnow, pool_size: int | None = None) -> Kernel:
    """The kernel of a server process (pool_size from the settings) or of a one-shot command (pool_size=1)."""
    # A missing secret fails before anything is created on disk.
    previous = [k.get_secret_value() for k in settings.previous_secret_keys]
    keys = KeyMaterial(settings.secrets.secret_key, previous)
    if not settings.database_url:  # the commands fill it in: the embedded PostgreSQL's (app/cli/common.py)
        raise SettingsError("GATEWAY_DATABASE_URL is empty: run the gateway with `seedream-gateway serve`")
    engine = create_engine(settings.database_url, pool_size=pool_size or settings.db_pool_size)
    return Kernel(settings=settings, engine=engine, sessions=create_session_factory(engine), keys=keys, clock=clock)


@asynccontextmanager
async def kernel_for_command(settings: Settings) -> AsyncIterator[Kernel]:
    """A one-connection kernel for one CLI command, disposed at the end."""
    kernel = build_kernel(settings, pool_size=1)
    try:
        yield kernel
    finally:
        await kernel.aclose()
