"""The upstream feature as the lifespan builds it: the adapter (one pooled aiohttp session), the key pool (its state,
and its service: reloaded on invalidation events), the prober of refused keys and the ops service."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from app.core.background import cancel_and_wait
from app.core.config import Settings, is_placeholder_upstream_key
from app.core.invalidation import Invalidator
from app.core.net import local_host_for
from app.core.runtime import Kernel
from app.core.tracing import Tracing
from app.upstream.base import UpstreamAdapter
from app.upstream.instrumented import InstrumentedAdapter
from app.upstream.pool import PoolPolicy, UpstreamKeyPool
from app.upstream.prober import KeyProber
from app.upstream.service import PoolService, UpstreamKeyService
from app.upstream.toapis import ToAPIsAdapter, build_session

SANDBOX_MOUNT = "/_sandbox"
SANDBOX_DEMO_UPSTREAM_KEY = "sk-sandbox-demo"


def upstream_base_url(settings: Settings) -> str:
    """The configured upstream, or the sandbox mounted inside this very server in zero-config mode."""
    if settings.upstream_base_url:
        return settings.upstream_base_url
    return f"http://{local_host_for(settings.host)}:{settings.port}{SANDBOX_MOUNT}"


def configured_upstream_keys(settings: Settings) -> list[str]:
    """GATEWAY_UPSTREAM_KEYS (a placeholder is refused by the secrets' check, and dropped in demo mode), or the
    sandbox's demo key in demo mode."""
    keys = [k.get_secret_value() for k in settings.upstream_keys]
    keys = [k for k in keys if not is_placeholder_upstream_key(k)]
    if not keys and settings.zero_config:
        keys = [SANDBOX_DEMO_UPSTREAM_KEY]
    return keys


@dataclass
class Upstream:
    adapter: UpstreamAdapter
    pool_service: PoolService  # slots on keys, and what the upstream's answers say about a key
    keys: UpstreamKeyService
    prober: KeyProber
    _probing: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def pool(self) -> UpstreamKeyPool:
        """The keys as this process holds them (choosing one reads no database)."""
        return self.pool_service.pool

    def start(self) -> None:
        """Start the prober of refused keys (one loop per process)."""
        if self._probing is None:
            self._probing = asyncio.create_task(self.prober.run_forever(), name="upstream-key-prober")

    async def stop(self) -> None:
        await cancel_and_wait(self._probing)
        self._probing = None
        await self.pool_service.aclose()

    async def aclose(self) -> None:
        await self.stop()
        await self.adapter.aclose()


async def load_pool(kernel: Kernel, policy: PoolPolicy | None = None) -> PoolService:
    """The key pool's service with the configured keys stored and every key loaded (SettingsError when
    unreadable)."""
    policy = policy or PoolPolicy(error_cooldown_s=kernel.settings.upstream_error_cooldown_s)
    service = PoolService(
        kernel.sessions, kernel.keys, kernel.clock, UpstreamKeyPool(kernel.keys, kernel.clock, policy)
    )
    await service.load(configured_upstream_keys(kernel.settings))
    return service


async def build_upstream(
    kernel: Kernel,
    *,
    adapter: UpstreamAdapter | None = None,
    invalidator: Invalidator | None = None,
    policy: PoolPolicy | None = None,
    tracing: Tracing | None = None,
) -> Upstream:
    """Tests may inject an adapter; otherwise the ToAPIs adapter over one session, from the settings.

    With `invalidator` (a serving process), the pool reloads a key whenever any replica changes it (subscribed
    before the invalidator's first read, so no change is missed) and the prober of refused keys starts; `aclose`
    stops it. With `tracing`, each upstream call gets a client span."""
    pool_service = await load_pool(kernel, policy)
    if invalidator is not None:
        pool_service.subscribe(invalidator)
    settings = kernel.settings
    if adapter is None:
        session = build_session(
            user_agent=settings.user_agent,
            timeout_s=settings.upstream_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            max_connections=settings.upstream_max_connections,
            trace_configs=tracing.upstream_trace_configs() if tracing is not None else (),
        )
        adapter = ToAPIsAdapter(session, upstream_base_url(settings))
    adapter = InstrumentedAdapter(adapter, pool_service.pool)
    upstream = Upstream(
        adapter=adapter,
        pool_service=pool_service,
        keys=UpstreamKeyService(kernel.sessions, kernel.keys, kernel.clock, pool_service),
        prober=KeyProber(pool_service, adapter),
    )
    if invalidator is not None:
        upstream.start()
    return upstream
