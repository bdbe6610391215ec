"""The webhooks feature as the lifespan builds it: the service, its sender and the background deliverer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx

from app.core.background import cancel_and_wait
from app.core.invalidation import Invalidator
from app.core.runtime import Kernel
from app.webhooks.sender import Sender
from app.webhooks.service import WebhookService
from app.webhooks.targets import Resolver, system_resolver
from app.webhooks.worker import WebhookDeliverer


@dataclass
class Webhooks:
    service: WebhookService
    deliverer: WebhookDeliverer
    sender: Sender
    _running: asyncio.Task[None] | None = field(default=None, init=False)

    def start(self) -> None:
        if self._running is None:
            self._running = asyncio.create_task(self.deliverer.run_forever(), name="webhook-deliverer")

    async def stop(self) -> None:
        """Stop the deliverer (an attempt in flight is cancelled: its lease runs out and it is tried again) and
        close the sender's connections."""
        await cancel_and_wait(self._running)
        self._running = None
        await self.sender.aclose()


def webhook_service(
    kernel: Kernel,
    *,
    invalidator: Invalidator | None = None,
    sender: Sender | None = None,
    resolver: Resolver = system_resolver,
) -> WebhookService:
    """The service as the ops API and the command line use it (the command line has no sender: it only
    enqueues; the servers' deliverers send)."""
    settings = kernel.settings
    return WebhookService(
        kernel.sessions,
        kernel.keys,
        kernel.clock,
        allow_private=settings.webhook_allow_private,
        retry_schedule_s=settings.webhook_retry_schedule_s,
        resolver=resolver,
        sender=sender,
        invalidator=invalidator,
    )


def build_webhooks(
    kernel: Kernel,
    *,
    invalidator: Invalidator | None = None,
    resolver: Resolver = system_resolver,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Webhooks:
    settings = kernel.settings
    sender = Sender(
        resolver, allow_private=settings.webhook_allow_private, user_agent=settings.user_agent, transport=transport
    )
    service = webhook_service(kernel, invalidator=invalidator, sender=sender, resolver=resolver)
    deliverer = WebhookDeliverer(service, settings.webhook_poll_interval_s)
    return Webhooks(service=service, deliverer=deliverer, sender=sender)
