"""The per-tenant task ledger: one row per generation task."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.contract import TaskStatus as PublicStatus
from app.core.db.base import Base, UTCDateTime


class TaskStatus(StrEnum):
    """A task's status in the ledger: the four the contract documents (app/contract.py), and the ledger's own
    `submitting` and `waiting`, which callers see as `queued`."""

    SUBMITTING = "submitting"  # the create call has not been answered yet
    WAITING = "waiting"  # the upstream could not take it yet; the reconciler sends it
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def public(self) -> PublicStatus:
        """The status a caller sees."""
        return PublicStatus.QUEUED if self in (TaskStatus.SUBMITTING, TaskStatus.WAITING) else PublicStatus(self.value)


TERMINAL_STATUSES: frozenset[TaskStatus] = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED})
OPEN_STATUSES: frozenset[TaskStatus] = frozenset(set(TaskStatus) - TERMINAL_STATUSES)

END_USER_MAX_CHARS = 128


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_tasks_upstream_task_id", "upstream_task_id"),
        Index("ix_tasks_status_updated_at", "status", "updated_at"),
        # The reconciler's and the dispatcher's "what is due": open tasks by their next look (terminal rows have
        # NULL there, and stay out of the way).
        Index("ix_tasks_next_check_at", "next_check_at"),
        # One task per tenant and Idempotency-Key (NULLs do not collide).
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_tasks_tenant_id_idempotency_key"),
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
    status: Mapped[str] = mapped_column(String(16))  # a TaskStatus value
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
    # --- the task lifecycle (issue 9) ---
    # The caller's Idempotency-Key and the SHA-256 of the request it came with (same key + other body = refused).
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    # When the task is next due: for a task waiting to be sent (`waiting`), its next create attempt; for one the
    # upstream has, its next status check. NULL once terminal.
    next_check_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    # A process working on the task holds it until lease_until (FOR UPDATE SKIP LOCKED claims).
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))  # create calls made
    # Create calls the upstream answered 5xx: only the first counts against its key's health, and the task fails
    # at MAX_SERVER_ERRORS (app/tasks/service.py), so one caller's failing request cannot cool keys for everyone.
    server_errors: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # The last moment the task may still be sent (waiting) or may stay open (after that: a final check, then
    # failed and refunded).
    deadline_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    # A create call that timed out after the request was sent: the upstream may have the task (and bill it).
    outcome_unknown: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    last_error: Mapped[str | None] = mapped_column(Text, default=None)  # why the last attempt or check failed
    # Where the task's end is delivered besides the tenant's webhook (an origin the tenant allows).
    callback_url: Mapped[str | None] = mapped_column(Text, default=None)
    # The end user whose token made the task (the tenant's own id for the person); NULL: made with a tenant key.
    # A token reads only its own end user's tasks.
    end_user: Mapped[str | None] = mapped_column(String(END_USER_MAX_CHARS), default=None)
