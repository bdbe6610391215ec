"""The ops API's shapes for webhooks: a tenant's webhook configuration and the delivery log. No answer carries a
signing secret except the one that makes it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from app.contract import HTTP_URL_PATTERN, INTEGRAL, ContractError, is_http_url
from app.core.clock import to_unix
from app.core.pagination import Cursor, Page
from app.models import Tenant
from app.models.webhook import WebhookDelivery

MAX_URL_CHARS = 2048
MAX_ORIGINS = 20
MAX_GRACE_S = 30 * 24 * 3600
DEFAULT_GRACE_S = 24 * 3600
DELIVERY_CURSOR = Cursor.of_ids("evt_")
# What a delivery id or a task id can be (both String(48)); any other names no row and is answered without a query.
ID_PATTERN = r"^[A-Za-z0-9_]{1,48}$"

DeliveryStatus = Literal["pending", "delivered", "dead"]
EventType = Literal["generation.completed", "generation.failed", "endpoint.test"]
HttpUrl = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        json_schema_extra={"pattern": HTTP_URL_PATTERN},
        description="An http(s) URL; its host must resolve to public addresses only "
        "(unless GATEWAY_WEBHOOK_ALLOW_PRIVATE).",
    ),
]
Origin = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=300,
        json_schema_extra={"pattern": HTTP_URL_PATTERN},
        description="scheme://host[:port], nothing after it.",
    ),
]


class WebhookUpdate(BaseModel):
    """Fields given are set; fields omitted stay unchanged. The first PUT of a tenant makes its signing secret."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"url": "https://hooks.example.com/seedream", "callback_origins": ["https://app.example.com"]}
        },
    )

    url: HttpUrl | None = Field(None, description="Where every task end of the tenant is posted; null = nowhere.")
    callback_origins: Annotated[list[Origin], Field(max_length=MAX_ORIGINS)] | None = Field(
        None, description="Origins a create request's callback_url may point at; null or [] = none."
    )
    rotate_secret: StrictBool = Field(
        False, description="Make a new signing secret (shown once); the previous one signs too for grace_seconds."
    )
    grace_seconds: Annotated[StrictInt, Field(ge=0, le=MAX_GRACE_S), INTEGRAL] = Field(
        DEFAULT_GRACE_S, description="After a rotation, how long the previous secret still signs (default 1 day)."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not is_http_url(value):
            raise ContractError("url must be an http(s) URL without control characters.", param="url")
        return value

    @field_validator("callback_origins")
    @classmethod
    def _http_origins(cls, value: list[str] | None) -> list[str] | None:
        if any(not is_http_url(v) for v in value or []):
            raise ContractError(
                "callback_origins must be http(s) origins without control characters.", param="callback_origins"
            )
        return value

    def given(self) -> set[str]:
        return set(self.model_fields_set)


class WebhookOut(BaseModel):
    """A tenant's webhook configuration. `secret` only in the answer that made it (the first PUT, a rotation)."""

    tenant_id: str
    url: str | None
    callback_origins: list[str]
    secret_set: bool = Field(description="Whether the tenant has a signing secret.")
    previous_secret_until: int | None = Field(
        description="Until when (unix) the previous secret still signs after a rotation; null when none does."
    )
    secret: str | None = Field(None, description="The new signing secret: shown this once, stored encrypted.")

    @classmethod
    def of(cls, tenant: Tenant, *, now_unix: int, secret: str | None = None) -> WebhookOut:
        until = to_unix(tenant.webhook_previous_until)
        signing_previous = tenant.webhook_previous_secret is not None and until is not None and until > now_unix
        return cls(
            tenant_id=tenant.id,
            url=tenant.webhook_url,
            callback_origins=list(tenant.callback_origins or []),
            secret_set=tenant.webhook_secret is not None,
            previous_secret_until=until if signing_previous else None,
            secret=secret,
        )


class DeliveryOut(BaseModel):
    """One event to one target, and what became of it (never a secret)."""

    model_config = ConfigDict(json_schema_extra={"example": {"id": "evt_0190...", "status": "delivered"}})

    id: str = Field(description="The event id (`X-ToAPIs-Webhook-Id`), which receivers deduplicate on.")
    tenant_id: str
    task_id: str | None
    event_type: EventType
    url: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: int | None
    last_status_code: int | None
    last_error: str | None
    created_at: int
    updated_at: int
    delivered_at: int | None

    @classmethod
    def of(cls, row: WebhookDelivery) -> DeliveryOut:
        values: dict[str, Any] = {
            "id": row.id,
            "tenant_id": row.tenant_id,
            "task_id": row.task_id,
            "event_type": row.event_type,
            "url": row.url,
            "status": row.status,
            "attempts": row.attempts,
            "next_attempt_at": to_unix(row.next_attempt_at) if row.status == "pending" else None,
            "last_status_code": row.last_status_code,
            "last_error": row.last_error,
            "created_at": to_unix(row.created_at) or 0,
            "updated_at": to_unix(row.updated_at) or 0,
            "delivered_at": to_unix(row.delivered_at),
        }
        return cls(**values)


class DeliveryList(Page[DeliveryOut]):
    """The webhook delivery log, newest first."""
