"""Tenants and their API keys (stored as keyed hashes, never in plaintext)."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db.base import Base, UTCDateTime


# Statuses are stored as their strings (no CHECK constraint): the enums are the one list of them in the code.
class TenantStatus(StrEnum):
    """Every status of a tenant."""

    ACTIVE = "active"
    DISABLED = "disabled"  # every key refused until enabled again; its open tasks still settle
    DELETED = "deleted"  # for good: kept for its ledger, gone from the ops surface, its name still taken


class KeyStatus(StrEnum):
    """What a tenant key is at a given moment (read from when it was revoked and when it expires)."""

    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=TenantStatus.ACTIVE)  # a TenantStatus value
    # Limits set by ops; NULL means unlimited. Kept in memory with the key (app/tenants/auth_cache.py); a change
    # applies at once on the replica that made it and within the invalidation bound on every other.
    daily_images: Mapped[int | None] = mapped_column(Integer, default=None)
    monthly_images: Mapped[int | None] = mapped_column(Integer, default=None)
    max_in_flight: Mapped[int | None] = mapped_column(Integer, default=None)
    submit_rpm: Mapped[int | None] = mapped_column(Integer, default=None)
    query_rpm: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Webhooks (issue 9): the endpoint and its signing secrets, encrypted with GATEWAY_SECRET_KEY (KeyMaterial).
    # During a secret rotation the previous secret signs too, until webhook_previous_until.
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_secret: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_previous_secret: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_previous_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Origins (scheme://host[:port]) a request's callback_url may point at; JSON list, NULL = none.
    callback_origins: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    # Browser origins whose pages may read the tenant's answers (CORS); JSON list, NULL = GATEWAY_CORS_ORIGINS.
    cors_origins: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    # End-user tokens (app/tenants/tokens.py) issued at or before this moment are refused: "revoke every token".
    tokens_valid_after: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Kept results (issue 23): days a completed task's images are kept in the gateway's store; NULL = the gateway's
    # default (GATEWAY_RESULTS_RETENTION_DAYS), 0 = not kept (callers get the upstream's links only).
    result_retention_days: Mapped[int | None] = mapped_column(Integer, default=None)


class TenantKey(Base):
    __tablename__ = "tenant_keys"
    __table_args__ = (Index("ix_tenant_keys_tenant_id", "tenant_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the key's public id, shown in listings
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Which GATEWAY_SECRET_KEY keyed the hash (security.KeyMaterial.key_id): previous secrets still verify, and a
    # key is re-keyed with the current secret the next time it is used.
    hash_key_id: Mapped[str] = mapped_column(String(16), default="", server_default=text("''"))
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="", server_default=text("''"))
    scopes: Mapped[str] = mapped_column(String(64), default="submit,read", server_default=text("'submit,read'"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    # The key this one replaced by a rotation (that key then expires at the end of its grace period).
    rotated_from_id: Mapped[str | None] = mapped_column(String(40), default=None)
