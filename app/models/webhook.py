"""Webhook deliveries: one row per event and target, its attempts, and what became of it (issue 9)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db.base import Base, UTCDateTime


class WebhookDelivery(Base):
    """An event to deliver at least once: pending until a 2xx (delivered) or the last retry (dead)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_webhook_deliveries_task_id", "task_id"),
    )

    id: Mapped[str] = mapped_column(String(48), primary_key=True)  # the event id (`evt_...`), as receivers dedupe
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task_id: Mapped[str | None] = mapped_column(String(48), default=None)
    event_type: Mapped[str] = mapped_column(String(32))  # generation.completed | generation.failed | endpoint.test
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)  # the exact bytes signed and sent (UTF-8 JSON)
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
