"""The results feature as the lifespan builds it: the store, the fetcher, the service and its copier."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

import httpx

from app.core.background import cancel_and_wait
from app.core.runtime import Kernel
from app.results.fetch import Fetcher
from app.results.service import ResultService
from app.results.store import ResultStore, build_store
from app.results.worker import ResultCopier
from app.tasks.reconciler import process_name
from app.webhooks.service import WebhookService
from app.webhooks.targets import Resolver, system_resolver


@dataclass
class Results:
    service: ResultService
    copier: ResultCopier | None
    fetcher: Fetcher | None
    _running: asyncio.Task[None] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start the copier (unless results are off or GATEWAY_RESULTS_POLL_INTERVAL_S is 0)."""
        if self.copier is not None and self._running is None:
            self._running = asyncio.create_task(self.copier.run_forever(), name="result-copier")

    async def stop(self) -> None:
        """Stop the copier (a copy in flight is cancelled: nothing was published, its lease runs out and another
        round copies it again) and close the fetcher's connections."""
        await cancel_and_wait(self._running)
        self._running = None
        if self.fetcher is not None:
            await self.fetcher.aclose()


def result_service(
    kernel: Kernel,
    *,
    store: ResultStore | None = None,
    fetcher: Fetcher | None = None,
    webhooks: WebhookService | None = None,
) -> ResultService:
    """The service as the servers and the command line use it (the command line neither copies nor serves)."""
    settings = kernel.settings
    return ResultService(
        kernel.sessions,
        store,
        fetcher,
        kernel.keys,
        kernel.clock,
        base_url=settings.gateway_url,
        link_ttl=dt.timedelta(seconds=settings.results_link_ttl_s),
        default_days=settings.results_retention_days,
        refresh_interval=dt.timedelta(seconds=settings.status_refresh_interval_s),
        webhook_hold=dt.timedelta(seconds=settings.results_webhook_hold_s),
        webhooks=webhooks,
        concurrency=settings.results_copy_concurrency,
        max_bytes_per_s=settings.results_copy_max_mib_s * 1024 * 1024,
        owner=process_name(),
        lease=dt.timedelta(seconds=settings.results_copy_lease_s),
    )


def build_results(
    kernel: Kernel,
    *,
    webhooks: WebhookService | None = None,
    resolver: Resolver = system_resolver,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Results:
    settings = kernel.settings
    store = build_store(settings)
    fetcher = None
    if store is not None:
        fetcher = Fetcher(
            resolver,
            allow_private=settings.results_fetch_private,
            user_agent=settings.user_agent,
            max_bytes=settings.results_max_image_bytes,
            transport=transport,
        )
    service = result_service(kernel, store=store, fetcher=fetcher, webhooks=webhooks)
    copier = (
        ResultCopier(service, settings.results_poll_interval_s) if store and settings.results_poll_interval_s else None
    )
    return Results(service=service, copier=copier, fetcher=fetcher)
