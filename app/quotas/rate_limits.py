"""Per-tenant request rates (submits and status queries per minute) in fixed one-minute windows.

Windows live in the database by default (one conditional upsert per request, shared by every replica) or in Redis
when GATEWAY_REDIS_URL is set (one atomic script call). Refused requests are not counted, as upstream.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import Clock
from app.core.errors import RateLimited
from app.quotas import repository as repo

WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: int

    def headers(self, now: dt.datetime) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.reset_at - now.timestamp())))
        return headers


class WindowStore(Protocol):
    async def hit(self, tenant_id: str, kind: str, window_start: int, limit: int) -> int | None:
        """Count one request unless the window holds `limit` already: the new count, or None when refused."""


class SqlWindowStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def hit(self, tenant_id: str, kind: str, window_start: int, limit: int) -> int | None:
        async with self._sessions.begin() as session:
            count = await repo.hit_window(session, tenant_id, kind, window_start, limit)
            if count == 1:  # first request of a new window: the old ones are of no further use
                await repo.drop_windows_before(session, tenant_id, kind, window_start)
        return count


_REDIS_HIT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= tonumber(ARGV[1]) then return -1 end
current = redis.call('INCR', KEYS[1])
if current == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return current
"""


class RedisWindowStore:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._script = client.register_script(_REDIS_HIT)

    async def hit(self, tenant_id: str, kind: str, window_start: int, limit: int) -> int | None:
        key = f"gw:rl:{tenant_id}:{kind}:{window_start}"
        count = int(await self._script(keys=[key], args=[limit, 2 * WINDOW_S]))
        return None if count < 0 else count

    async def aclose(self) -> None:
        await self._client.aclose()


class RateLimitService:
    def __init__(self, store: WindowStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def enforce(self, tenant_id: str, kind: str, limit: int | None) -> dict[str, str]:
        """Count a request of `kind`; the rate headers to send, or RateLimited (429) when over the limit."""
        if limit is None:
            return {}
        now = self._clock()
        window_start = int(now.timestamp()) // WINDOW_S * WINDOW_S
        count = await self._store.hit(tenant_id, kind, window_start, limit) if limit > 0 else None
        decision = RateDecision(
            allowed=count is not None,
            limit=limit,
            remaining=max(limit - (count or limit), 0),
            reset_at=window_start + WINDOW_S,
        )
        if not decision.allowed:
            raise RateLimited(
                f"Rate limit of {limit} {kind} requests per minute exceeded.", headers=decision.headers(now)
            )
        return decision.headers(now)
