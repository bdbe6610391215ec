"""The per-tenant task ledger: one row per generation task."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db.base import Base, UTCDateTime


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_tasks_upstream_task_id", "upstream_task_id"),
        Index("ix_tasks_status_updated_at", "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    upstream_task_id: Mapped[str | None] = mapped_column(String(128), default=None)
    upstream_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("upstream_keys.id", ondelete="SET NULL"), default=None
    )
    model: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    n: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # a contract.TaskStatus value
    progress: Mapped[int] = mapped_column(Integer, default=0)
    result_urls: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    client_business_id: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    refreshed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
