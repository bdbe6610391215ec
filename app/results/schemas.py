"""Shapes of the kept-results API: a tenant's storage, a retention change, a deletion's outcome."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.results.service import StorageUsage


class StorageOut(BaseModel):
    images: int = Field(description="Result images kept in the gateway's store.")
    bytes: int = Field(description="Their size.")
    pending: int = Field(description="Images still being copied from the upstream.")
    retention_days: int = Field(description="Days images are kept after their task completes (0: not kept).")

    @classmethod
    def of(cls, usage: StorageUsage) -> StorageOut:
        return cls(images=usage.images, bytes=usage.bytes, pending=usage.pending, retention_days=usage.retention_days)


class RetentionUpdate(BaseModel):
    retention_days: int | None = Field(
        description="Days to keep the tenant's images (0: keep none, delete those kept); null: the gateway's default.",
        ge=0,
        le=36500,
    )


class ImagesDeleted(BaseModel):
    object: str = "images.deleted"
    tenant_id: str
    images: int = Field(description="Images whose retention ended now (deleted from the store within seconds).")
