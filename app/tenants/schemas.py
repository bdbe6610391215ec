"""The ops API's shapes for tenants."""

from __future__ import annotations

from pydantic import BaseModel

from app.core.limits import LIMIT_NAMES
from app.models import Tenant


class Limits(BaseModel):
    """A tenant's limits; `null` means unlimited."""

    tenant_id: str
    daily_images: int | None
    monthly_images: int | None
    max_in_flight: int | None
    submit_rpm: int | None
    query_rpm: int | None

    @classmethod
    def of(cls, tenant: Tenant) -> Limits:
        return cls(tenant_id=tenant.id, **{name: getattr(tenant, name) for name in LIMIT_NAMES})
