"""The upstream feature as the lifespan builds it: the adapter (one pooled HTTP client) and the key pool."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from app.config import Settings
from app.core.net import local_host_for
from app.runtime import Kernel
from app.upstream.base import UpstreamAdapter
from app.upstream.pool import UpstreamKeyPool
from app.upstream.toapis import ToAPIsAdapter, build_http_client

SANDBOX_MOUNT = "/_sandbox"
SANDBOX_DEMO_UPSTREAM_KEY = "sk-sandbox-demo"


def upstream_base_url(settings: Settings) -> str:
    """The configured upstream, or the sandbox mounted inside this very server in zero-config mode."""
    if settings.upstream_base_url:
        return settings.upstream_base_url
    return f"http://{local_host_for(settings.host)}:{settings.port}{SANDBOX_MOUNT}"


def configured_upstream_keys(settings: Settings) -> list[str]:
    keys = [k.get_secret_value() for k in settings.upstream_keys]
    if not keys and settings.zero_config:
        keys = [SANDBOX_DEMO_UPSTREAM_KEY]
    return keys


@dataclass
class Upstream:
    adapter: UpstreamAdapter
    pool: UpstreamKeyPool

    async def aclose(self) -> None:
        await self.adapter.aclose()


async def load_pool(kernel: Kernel) -> UpstreamKeyPool:
    """The key pool with the configured keys stored and every active key loaded (SettingsError when unreadable)."""
    pool = UpstreamKeyPool(kernel.sessions, kernel.keys, kernel.clock)
    await pool.load(configured_upstream_keys(kernel.settings))
    return pool


async def build_upstream(
    kernel: Kernel,
    *,
    adapter: UpstreamAdapter | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Upstream:
    """Tests inject an adapter or a transport; production builds the ToAPIs adapter from the settings."""
    pool = await load_pool(kernel)
    settings = kernel.settings
    return Upstream(
        adapter=adapter
        or ToAPIsAdapter(
            build_http_client(
                upstream_base_url(settings),
                user_agent=settings.user_agent,
                timeout_s=settings.upstream_timeout_s,
                connect_timeout_s=settings.upstream_connect_timeout_s,
                max_connections=settings.upstream_max_connections,
                transport=transport,
            )
        ),
        pool=pool,
    )
