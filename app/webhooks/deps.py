"""The webhook service as a dependency (`app.state.webhooks`, set by the lifespan)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.webhooks.service import WebhookService


async def get_webhook_service(request: Request) -> WebhookService:
    service: WebhookService = request.app.state.webhooks
    return service


WebhookServiceDep = Annotated[WebhookService, Depends(get_webhook_service)]
