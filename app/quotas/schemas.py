"""Shapes of the quota API: a tenant's usage, the drift report."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.quotas.service import Drift, PeriodUsage, Usage
from app.results.schemas import StorageOut


class PeriodUsageOut(BaseModel):
    period: str = Field(description="`YYYY-MM-DD` (UTC day) or `YYYY-MM` (calendar month).")
    used: int = Field(description="Images reserved by open tasks plus images produced by finished ones.")
    limit: int | None
    remaining: int | None
    resets_at: int = Field(description="Unix time the period ends.")

    @classmethod
    def of(cls, usage: PeriodUsage) -> PeriodUsageOut:
        return cls(
            period=usage.period,
            used=usage.used,
            limit=usage.limit,
            remaining=usage.remaining,
            resets_at=usage.resets_at,
        )


class InFlightOut(BaseModel):
    current: int
    limit: int | None


class UsageOut(BaseModel):
    object: str = "usage"
    tenant_id: str
    day: PeriodUsageOut
    month: PeriodUsageOut
    in_flight: InFlightOut
    storage: StorageOut | None = Field(
        None, description="Result images kept in the gateway's store (absent when the gateway keeps none)."
    )

    @classmethod
    def of(cls, usage: Usage, storage: StorageOut | None = None) -> UsageOut:
        return cls(
            tenant_id=usage.tenant_id,
            day=PeriodUsageOut.of(usage.day),
            month=PeriodUsageOut.of(usage.month),
            in_flight=InFlightOut(current=usage.in_flight, limit=usage.max_in_flight),
            storage=storage,
        )


class DriftRow(BaseModel):
    tenant_id: str
    counter: str
    stored: int
    expected: int


class DriftReport(BaseModel):
    ok: bool
    drift: list[DriftRow]

    @classmethod
    def of(cls, rows: list[Drift]) -> DriftReport:
        return cls(
            ok=not rows,
            drift=[
                DriftRow(tenant_id=r.tenant_id, counter=r.counter, stored=r.stored, expected=r.expected) for r in rows
            ],
        )
