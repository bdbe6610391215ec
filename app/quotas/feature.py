"""The quotas feature as the lifespan builds it: usage and drift reports, and the per-minute rate windows."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio

from app.core.runtime import Kernel
from app.quotas.rate_limits import RateLimitService, RedisWindowStore, SqlWindowStore
from app.quotas.service import QuotaService


@dataclass
class Quotas:
    service: QuotaService
    rate_limits: RateLimitService
    redis_store: RedisWindowStore | None

    async def aclose(self) -> None:
        if self.redis_store is not None:
            await self.redis_store.aclose()


def build_quotas(kernel: Kernel) -> Quotas:
    """Rate windows in Redis when GATEWAY_REDIS_URL is set, in the database otherwise."""
    url = kernel.settings.redis_url
    # Bounded socket timeouts: a Redis that swallows packets must not hold requests (windows fail open instead).
    client = redis.asyncio.from_url(url, socket_connect_timeout=2, socket_timeout=2) if url else None
    redis_store = RedisWindowStore(client) if client is not None else None
    return Quotas(
        service=QuotaService(kernel.sessions, kernel.clock),
        rate_limits=RateLimitService(redis_store or SqlWindowStore(kernel.sessions), kernel.clock),
        redis_store=redis_store,
    )
