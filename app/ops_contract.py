"""Pydantic models of the gateway's own API (not the upstream's): limits, usage, quota drift."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.quotas.service import Drift, PeriodUsage, Usage

LimitValue = Annotated[StrictInt, Field(ge=0)] | None


class LimitsUpdate(BaseModel):
    """Fields given are set (`null` = unlimited); fields omitted stay unchanged."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"daily_images": 500, "query_rpm": None}})

    daily_images: LimitValue = None
    monthly_images: LimitValue = None
    max_in_flight: LimitValue = None
    submit_rpm: LimitValue = None
    query_rpm: LimitValue = None


class Limits(BaseModel):
    """A tenant's limits; `null` means unlimited."""

    tenant_id: str
    daily_images: int | None
    monthly_images: int | None
    max_in_flight: int | None
    submit_rpm: int | None
    query_rpm: int | None


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

    @classmethod
    def of(cls, usage: Usage) -> UsageOut:
        return cls(
            tenant_id=usage.tenant_id,
            day=PeriodUsageOut.of(usage.day),
            month=PeriodUsageOut.of(usage.month),
            in_flight=InFlightOut(current=usage.in_flight, limit=usage.max_in_flight),
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
