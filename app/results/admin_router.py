"""Ops API for kept results: a tenant's storage and retention, and deleting its images."""

from __future__ import annotations

from fastapi import APIRouter

from app.audit.service import ACTOR_ADMIN_TOKEN
from app.contract import ErrorEnvelope
from app.core.deps import AdminDep
from app.results.deps import ResultServiceDep
from app.results.schemas import ImagesDeleted, RetentionUpdate, StorageOut

router = APIRouter(
    prefix="/admin/v1",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope}},
)


@router.get("/tenants/{tenant_id}/images", response_model=StorageOut, summary="A tenant's kept images: storage used")
async def get_images(tenant_id: str, results: ResultServiceDep) -> StorageOut:
    return StorageOut.of(await results.usage(tenant_id))


@router.put(
    "/tenants/{tenant_id}/images/retention",
    response_model=StorageOut,
    summary="Set how long a tenant's images are kept (applies to those already kept)",
)
async def put_retention(tenant_id: str, body: RetentionUpdate, results: ResultServiceDep) -> StorageOut:
    return StorageOut.of(await results.set_retention(tenant_id, body.retention_days, actor=ACTOR_ADMIN_TOKEN))


@router.delete(
    "/tenants/{tenant_id}/images",
    response_model=ImagesDeleted,
    summary="Delete a tenant's kept images (links stop at once; the store is emptied within seconds)",
)
async def delete_images(tenant_id: str, results: ResultServiceDep) -> ImagesDeleted:
    found, count = await results.delete_tenant_images(tenant_id, actor=ACTOR_ADMIN_TOKEN)
    return ImagesDeleted(tenant_id=found, images=count)
