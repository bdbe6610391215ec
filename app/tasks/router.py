"""The upstream-compatible contract: create a generation task, read its status."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header

from app.contract import ErrorEnvelope, GenerationRequest, TaskObject
from app.core.errors import UnsupportedMediaType
from app.quotas.deps import QueryRate, SubmitRate
from app.tasks.deps import TaskServiceDep
from app.tasks.service import to_task_object
from app.tenants.deps import TenantDep

router = APIRouter(prefix="/v1/images", tags=["generations"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": text}
    for status, text in {
        400: "Invalid request",
        401: "Missing or invalid API key",
        402: "Quota exhausted",
        413: "Body too large",
        415: "Not JSON",
        429: "Rate limited",
        502: "Upstream error",
        503: "No upstream key available",
        504: "Upstream timeout",
    }.items()
}


def require_json(content_type: Annotated[str | None, Header(include_in_schema=False)] = None) -> None:
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType("Content-Type must be application/json.")


@router.post(
    "/generations",
    response_model=TaskObject,
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[Depends(require_json), SubmitRate],
    summary="Create an image generation task",
)
async def create_generation(body: GenerationRequest, tenant: TenantDep, tasks: TaskServiceDep) -> TaskObject:
    task = await tasks.submit(tenant, body)
    return to_task_object(task, created=True)


@router.get(
    "/generations/{task_id}",
    response_model=TaskObject,
    response_model_exclude_none=True,
    responses={**_ERRORS, 404: {"model": ErrorEnvelope, "description": "Task not found"}},
    summary="Task status and result",
    dependencies=[QueryRate],
)
async def get_generation(task_id: str, tenant: TenantDep, tasks: TaskServiceDep) -> TaskObject:
    task = await tasks.status(tenant.id, task_id)
    return to_task_object(task)
