"""Everything long-lived, built by the lifespan and reached by routes through `request.app.state.gateway`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.security import KeyMaterial
from app.services.rate_limits import RateLimitService
from app.services.tasks import TaskService
from app.services.uploads import UploadService
from app.services.upstream_pool import UpstreamKeyPool
from app.timeutil import Clock
from app.upstream.base import UpstreamAdapter


@dataclass
class GatewayState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    keys: KeyMaterial
    adapter: UpstreamAdapter
    pool: UpstreamKeyPool
    tasks: TaskService
    uploads: UploadService
    rate_limits: RateLimitService
    clock: Clock
