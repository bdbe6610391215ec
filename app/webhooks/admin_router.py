"""Ops API for webhooks (admin bearer token): a tenant's endpoint, signing secret and callback origins; a test
event; the delivery log and replay. No answer carries a signing secret except the one that makes it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from app.audit.service import ACTOR_ADMIN_TOKEN
from app.contract import NO_CONTROL_PATTERN, ErrorEnvelope
from app.core.deps import AdminDep
from app.core.pagination import DEFAULT_PAGE, PAGE_ERRORS, limit_query
from app.webhooks.deps import WebhookServiceDep
from app.webhooks.schemas import (
    DELIVERY_CURSOR,
    ID_PATTERN,
    DeliveryList,
    DeliveryOut,
    DeliveryStatus,
    WebhookOut,
    WebhookUpdate,
)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorEnvelope} for status in statuses}


router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[AdminDep], responses=_errors(401, 404))

TenantId = Annotated[str, Path(description="The tenant's id or name.")]
DeliveryId = Annotated[str, Path(description="The delivery's (event's) id, `evt_...`.")]


@router.get("/tenants/{tenant_id}/webhook", response_model=WebhookOut, summary="A tenant's webhook configuration")
async def get_webhook(tenant_id: TenantId, webhooks: WebhookServiceDep) -> WebhookOut:
    """The endpoint, the callback origins and whether a signing secret is set (never the secret); 404
    `webhook_not_found` when the tenant has none (never set, or deleted)."""
    return await webhooks.describe(tenant_id)


@router.put(
    "/tenants/{tenant_id}/webhook",
    response_model=WebhookOut,
    responses=_errors(400, 409),
    summary="Set a tenant's webhook endpoint and callback origins; make or rotate its signing secret",
)
async def put_webhook(tenant_id: TenantId, body: WebhookUpdate, webhooks: WebhookServiceDep) -> WebhookOut:
    """Fields omitted stay unchanged. Every URL and origin must be http(s) and resolve to public addresses only
    (409 `invalid_webhook_target` otherwise, unless GATEWAY_WEBHOOK_ALLOW_PRIVATE). The first PUT of a tenant, and
    every `rotate_secret: true`, answers the new signing secret in `secret`, this once; after a rotation the
    previous secret signs too for `grace_seconds`."""
    return await webhooks.configure(tenant_id, body, actor=ACTOR_ADMIN_TOKEN)


@router.delete(
    "/tenants/{tenant_id}/webhook", response_model=WebhookOut, summary="Remove a tenant's webhook configuration"
)
async def delete_webhook(tenant_id: TenantId, webhooks: WebhookServiceDep) -> WebhookOut:
    """The endpoint, the signing secrets and the callback origins are forgotten; pending deliveries end `dead`."""
    return await webhooks.remove(tenant_id, actor=ACTOR_ADMIN_TOKEN)


@router.post(
    "/tenants/{tenant_id}/webhook/test",
    response_model=DeliveryOut,
    status_code=202,
    responses=_errors(409),
    summary="Send an endpoint.test event to the tenant's endpoint",
)
async def test_webhook(tenant_id: TenantId, webhooks: WebhookServiceDep) -> DeliveryOut:
    """Enqueued and sent at once; follow it with GET /admin/v1/webhook-deliveries/{id}. 409
    `webhook_not_configured` when the tenant has no endpoint."""
    return await webhooks.send_test(tenant_id, actor=ACTOR_ADMIN_TOKEN)


@router.get(
    "/webhook-deliveries",
    response_model=DeliveryList,
    responses=PAGE_ERRORS,
    summary="The webhook delivery log, newest first",
)
async def list_deliveries(
    webhooks: WebhookServiceDep,
    limit: Annotated[int, limit_query()] = DEFAULT_PAGE,
    cursor: Annotated[str | None, DELIVERY_CURSOR.query()] = None,
    tenant_id: Annotated[
        str | None, Query(max_length=200, pattern=NO_CONTROL_PATTERN, description="Only this tenant's (id or name).")
    ] = None,
    status: Annotated[DeliveryStatus | None, Query(description="Only deliveries in this state.")] = None,
    task_id: Annotated[
        str | None, Query(max_length=48, pattern=ID_PATTERN, description="Only this task's events.")
    ] = None,
) -> DeliveryList:
    """Attempts made, the last status code and error, the next attempt of pending ones."""
    return await webhooks.list_deliveries(limit=limit, cursor=cursor, tenant=tenant_id, status=status, task_id=task_id)


@router.get("/webhook-deliveries/{delivery_id}", response_model=DeliveryOut, summary="One webhook delivery")
async def get_delivery(delivery_id: DeliveryId, webhooks: WebhookServiceDep) -> DeliveryOut:
    return await webhooks.get_delivery(delivery_id)


@router.post(
    "/webhook-deliveries/{delivery_id}/replay",
    response_model=DeliveryOut,
    summary="Send a delivery again (pending, due now, attempts from zero; same event id)",
)
async def replay_delivery(delivery_id: DeliveryId, webhooks: WebhookServiceDep) -> DeliveryOut:
    return await webhooks.replay(delivery_id, actor=ACTOR_ADMIN_TOKEN)
