"""ORM tables; importing this package registers every table on Base.metadata."""

from app.models.task import Task
from app.models.tenant import Tenant, TenantKey
from app.models.upstream_key import UpstreamKey

__all__ = ["Task", "Tenant", "TenantKey", "UpstreamKey"]
