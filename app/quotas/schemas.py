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
    end_user: str | None = Field(
        None, description="With an end-user token: its end user, whose own images of the day `day` counts."
    )
    day: PeriodUsageOut
    month: PeriodUsageOut | None = Field(description="The tenant's month (null with an end-user token).")
    in_flight: InFlightOut | None = Field(description="The tenant's tasks in flight (null with an end-user token).")
    storage: StorageOut | None = Field(
        None, description="Result images kept in the gateway's store (absent when the gateway keeps none)."
    )

    @classmethod
    def of(cls, usage: Usage, storage: StorageOut | None = None) -> UsageOut:
        return cls(
            tenant_id=usage.tenant_id,
            end_user=usage.end_user,
            day=PeriodUsageOut.of(usage.day),
            month=None if usage.month is None else PeriodUsageOut.of(usage.month),
            in_flight=None
            if usage.in_flight is None
            else InFlightOut(current=usage.in_flight, limit=usage.max_in_flight),
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
