"""The ops API's shapes for the audit log."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.core.clock import to_unix
from app.core.pagination import Page
from app.models import AuditEvent


class AuditEventOut(BaseModel):
    object: Literal["audit_event"] = "audit_event"
    id: int
    created_at: int = Field(description="Unix time.")
    actor: str = Field(description='Who acted: "admin-token" (the ops API), "cli" (the command line), ...')
    action: str = Field(description='What was done, e.g. "tenant.create", "key.rotate", "limits.update".')
    target_type: str
    target_id: str | None
    outcome: str = Field(description='"ok", or "refused" when the action was refused (unknown target, conflict).')
    detail: dict[str, Any] | None = Field(description="What changed; never a secret value.")

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventOut:
        return cls(
            id=event.id,
            created_at=to_unix(event.created_at) or 0,
            actor=event.actor,
            action=event.action,
            target_type=event.target_type,
            target_id=event.target_id,
            outcome=event.outcome,
            detail=event.detail,
        )


class AuditList(Page[AuditEventOut]):
    """The audit log, newest first."""
