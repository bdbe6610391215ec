"""Per-tenant request rates (submits and status queries per minute) in fixed one-minute windows.

Windows live in the database by default (one conditional upsert per request, shared by every replica) or in Redis
when GATEWAY_REDIS_URL is set (one atomic script call). Refused requests are not counted, as upstream.

When Redis cannot be reached (or answers an error, or not within `timeout_s`), rate limits **fail open**: the
request is let through without rate headers, one WARNING is logged when the outage starts and one INFO when it ends
(app/core/outage.py). Meanwhile one request per `probe_interval_s` tries Redis again; the others do not wait for it.
Quotas are not affected: they live in the database. `ping()` is what /readyz reports.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis.exceptions
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import metrics, outage
from app.core.clock import Clock
from app.core.errors import RateLimited
from app.quotas import repository as repo

log = logging.getLogger(__name__)

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


class WindowStoreUnavailable(Exception):
    """The store cannot count right now (Redis down): the request is let through."""


class WindowStore(Protocol):
    backend: str

    async def hit(self, tenant_id: str, kind: str, window_start: int, limit: int) -> int | None:
        """Count one request unless the window holds `limit` already: the new count, or None when refused.

        Raises WindowStoreUnavailable when the store cannot be reached (the rate check then fails open)."""

    async def ping(self) -> bool:
        """Whether the store answers now."""

    async def release(self, tenant_id: str, kind: str, window_start: int) -> None:
        """Uncount one request of that window (one counted, then refused for another reason)."""


@dataclass(frozen=True, slots=True)
class Counted:
    """One request counted in one window: what `RateLimitService.give_back` uncounts."""

    tenant_id: str
    kind: str
    window_start: int


class SqlWindowStore:
    backend = "database"

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def ping(self) -> bool:
        try:
            async with self._sessions() as session:
                await session.execute(text("SELECT 1"))
        except Exception:  # a health check reports, it does not raise
            return False
        return True

    async def hit(self, tenant_id: str, kind: str, window_start: int, limit: int) -> int | None:
        async with self._sessions.begin() as session:
            count = await repo.hit_window(session, tenant_id, kind, window_start, limit)
            if count == 1:  # first request of a new window: the old ones are of no further use
                await repo.drop_windows_before(session, tenant_id, kind, window_start)
        return count

    async def release(self, tenant_id: str, kind: str, window_start: int) -> None:
        async with self._sessions.begin() as session:
            await repo.release_window(session, tenant_id, kind, window_start)


_REDIS_HIT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= tonumber(ARGV[1]) then return -1 end
current = redis.call('INCR', KEYS[1])
if current == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return current
"""


_REDIS_RELEASE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""


# Whatever Redis (or the way to it) can fail with: connection refused or lost, timeouts, a server loading its data
# set, out of memory, a read-only replica after a failover.
_REDIS_FAILURES = (redis.exceptions.RedisError, OSError, TimeoutError)


class RedisWindowStore:
    backend = "redis"

    def __init__(
        self,
        client: Any,
        *,
        timeout_s: float = 2.0,
        probe_interval_s: float = 1.0,
        tracker: outage.OutageTracker | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._script = client.register_script(_REDIS_HIT)
        self._release = client.register_script(_REDIS_RELEASE)
        self._timeout_s = timeout_s
        self._probe_interval_s = probe_interval_s
        self._tracker = tracker or outage.tracker(outage.REDIS)
        self._monotonic = monotonic
        self._next_probe = 0.0
        self.last_error: str | None = None

    async def hit(self, tenant_id: str, kind: str, window_start: int, limit: int) -> int | None:
        if self._tracker.is_down:  # one request per probe interval tries Redis; the others go on at once
            now = self._monotonic()
            if now < self._next_probe:
                raise WindowStoreUnavailable(self._tracker.reason)
            self._next_probe = now + self._probe_interval_s
        key = f"gw:rl:{tenant_id}:{kind}:{window_start}"
        try:
            async with asyncio.timeout(self._timeout_s):
                count = int(await self._script(keys=[key], args=[limit, 2 * WINDOW_S]))
        except _REDIS_FAILURES as e:
            self._failed(e)
            raise WindowStoreUnavailable(self.last_error) from e
        self._succeeded()
        return None if count < 0 else count

    async def release(self, tenant_id: str, kind: str, window_start: int) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._release(keys=[f"gw:rl:{tenant_id}:{kind}:{window_start}"], args=[])
        except _REDIS_FAILURES as e:
            self._failed(e)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.ping()
        except _REDIS_FAILURES as e:
            self._failed(e)
            return False
        self._succeeded()
        return True

    def _failed(self, e: BaseException) -> None:
        self.last_error = _describe(e)
        self._next_probe = self._monotonic() + self._probe_interval_s
        self._tracker.failed(self.last_error, source="the rate limits")

    def _succeeded(self) -> None:
        self.last_error = None
        self._tracker.recovered()

    async def aclose(self) -> None:
        await self._client.aclose()


def _describe(e: BaseException) -> str:
    message = str(e).strip().splitlines()
    if isinstance(e, TimeoutError) and not message:
        return "TimeoutError: no answer in time"
    return f"{type(e).__name__}: {message[0]}" if message else type(e).__name__


class RateLimitService:
    def __init__(self, store: WindowStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    @property
    def backend(self) -> str:
        """Where the windows live: "database" or "redis"."""
        return self._store.backend

    async def ping(self) -> bool:
        """Whether the window store answers now (for /readyz)."""
        return await self._store.ping()

    async def health(self) -> str | None:
        """What /readyz shows for the rate windows: None when they live in the database (its own check covers
        them), else "ok" or "degraded: <reason> (rate limits not enforced)"."""
        if self._store.backend == "database":
            return None
        if await self._store.ping():
            return "ok"
        reason = getattr(self._store, "last_error", None) or "no answer"
        return f"degraded: {reason} (rate limits not enforced)"

    async def enforce(
        self,
        tenant_id: str,
        kind: str,
        limit: int | None,
        *,
        end_user: str | None = None,
        counted: list[Counted] | None = None,
    ) -> dict[str, str]:
        """Count a request of `kind` (of one end user of the tenant: a window of its own); the rate headers to send,
        or RateLimited (429) when over the limit. The window counted in is appended to `counted` (for
        `give_back`, should the request be refused after all).

        When the store is unavailable the request is let through, without rate headers (fail open)."""
        if limit is None:
            return {}
        now = self._clock()
        window_start = int(now.timestamp()) // WINDOW_S * WINDOW_S
        key = kind if end_user is None else f"{kind}@{end_user}"
        try:
            count = await self._store.hit(tenant_id, key, window_start, limit) if limit > 0 else None
        except WindowStoreUnavailable:
            return {}
        decision = RateDecision(
            allowed=count is not None,
            limit=limit,
            remaining=max(limit - (count or limit), 0),
            reset_at=window_start + WINDOW_S,
        )
        if decision.allowed and counted is not None:
            counted.append(Counted(tenant_id, key, window_start))
        if not decision.allowed:
            metrics.refused(tenant_id, "rate")
            whose = "" if end_user is None else f" for the end user {end_user!r}"
            raise RateLimited(
                f"Rate limit of {limit} {kind} requests per minute{whose} exceeded.", headers=decision.headers(now)
            )
        return decision.headers(now)

    async def give_back(self, counted: list[Counted]) -> None:
        """Uncount requests counted and then refused for another reason (a 402 for the quota, another window's
        429): refused requests are not counted. Best effort: a store that cannot be reached keeps the count."""
        for one in counted:
            try:
                await self._store.release(one.tenant_id, one.kind, one.window_start)
            except WindowStoreUnavailable:  # pragma: no cover - the stores swallow their own failures
                return
            except Exception as e:  # a count left behind costs one slot until the minute ends
                log.warning("rate window not uncounted: %s", _describe(e))
                return
