"""ORM tables; importing this package registers every table on Base.metadata."""

from app.models.audit import AuditEvent
from app.models.invalidation import InvalidationEvent
from app.models.quota import QuotaCounter, QuotaEntry, RateWindow
from app.models.result import KeptImage, KeptState
from app.models.task import Task
from app.models.tenant import KeyStatus, Tenant, TenantKey, TenantStatus
from app.models.upstream_key import UpstreamKey, UpstreamKeyStatus
from app.models.webhook import WebhookDelivery

__all__ = [
    "AuditEvent",
    "InvalidationEvent",
    "KeptImage",
    "KeptState",
    "KeyStatus",
    "QuotaCounter",
    "QuotaEntry",
    "RateWindow",
    "Task",
    "Tenant",
    "TenantKey",
    "TenantStatus",
    "UpstreamKey",
    "UpstreamKeyStatus",
    "WebhookDelivery",
]
