"""Everything long-lived, built by the lifespan and reached by routes through `request.app.state.gateway`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.core.clock import Clock
from app.core.security import KeyMaterial
from app.quotas.rate_limits import RateLimitService
from app.tasks.service import TaskService
from app.uploads.service import UploadService
from app.upstream.base import UpstreamAdapter
from app.upstream.pool import UpstreamKeyPool


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
