"""The upstream-compatible contract: create a generation task, read its status."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Response

from app.contract import ErrorEnvelope, GenerationRequest, TaskObject
from app.core.errors import InvalidRequest, NotFound, UnsupportedMediaType
from app.core.ids import is_task_id
from app.quotas.deps import QueryCaller, SubmitCaller
from app.tasks.deps import TaskServiceDep
from app.tasks.service import render

router = APIRouter(prefix="/v1/images", tags=["generations"])


def _errors(texts: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorEnvelope, "description": text} for status, text in texts.items()}


# What each call can answer besides 200 (a 503 for the database is documented app-wide, app/core/openapi.py).
_CREATE_ERRORS = _errors(
    {
        400: "Invalid request",
        401: "Missing or invalid API key",
        402: "Quota exhausted (the tenant's, or a token's end user's images of the day)",
        403: "The API key or token lacks the `submit` scope, the token is used from an origin it was not minted for, "
        "or `callback_url` is not at an origin the tenant allows",
        413: "Body too large",
        415: "Not JSON",
        409: "The Idempotency-Key was used with another request body",
        429: "Rate limited (per-minute submits, the tenant's or a token's end user's, or tasks in flight), with "
        "`Retry-After`",
        502: "Upstream error",
        503: "No upstream key available",
        504: "Upstream timeout",
    }
)
# A status call never fails on the upstream's account: it answers the last known state instead.
_STATUS_ERRORS = _errors(
    {
        401: "Missing or invalid API key",
        403: "The API key or token lacks the `read` scope, or the token is used from an origin it was not minted for",
        404: "Task not found (also another tenant's task, another end user's for a token, and any id the gateway "
        "never makes)",
        429: "Rate limited (per-minute status queries), with `Retry-After`",
    }
)


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON (application/json, or any +json type), parameters aside."""
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def require_json(content_type: Annotated[str | None, Header(include_in_schema=False)] = None) -> None:
    if not is_json(content_type):
        raise UnsupportedMediaType("Content-Type must be application/json.")


IDEMPOTENCY_KEY_MAX = 255
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def idempotency_key(value: str | None) -> str | None:
    """The Idempotency-Key header as a submit takes it (printable ASCII, 1-255 characters, matched whole: a trailing
    newline does not pass), or InvalidRequest (400). The one check, for the route and the submit fast path."""
    if value is not None and (len(value) > IDEMPOTENCY_KEY_MAX or not _IDEMPOTENCY_KEY.fullmatch(value)):
        raise InvalidRequest(
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} printable ASCII characters without spaces.",
            param="Idempotency-Key",
        )
    return value


async def idempotency_key_header(
    value: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Makes a retried create safe: the same key with the same body within 24 h answers the task "
            "it made, charging nothing more; with another body, 409 `idempotency_key_reused`. Printable ASCII, "
            "1-255 characters, unique per tenant.",
            json_schema_extra={"minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX, "pattern": IDEMPOTENCY_KEY_PATTERN},
        ),
    ] = None,
) -> str | None:
    return idempotency_key(value)


@router.post(
    "/generations",
    response_model=TaskObject,
    response_model_exclude_none=True,
    responses=_CREATE_ERRORS,
    dependencies=[Depends(require_json)],
    summary="Create an image generation task",
)
async def create_generation(
    body: GenerationRequest,
    caller: SubmitCaller,
    tasks: TaskServiceDep,
    response: Response,
    idempotency_key: Annotated[str | None, Depends(idempotency_key_header)],
) -> Response:
    task = await tasks.submit(caller.tenant, body, idempotency_key=idempotency_key, end_user=caller.end_user)
    # Rendered here (TaskObject without None fields) rather than validated again against response_model by FastAPI.
    answer = Response(render(task, created=True), media_type="application/json")
    answer.headers.raw.extend(response.headers.raw)  # what the dependencies set (the rate headers)
    return answer


@router.get(
    "/generations/{task_id}",
    response_model=TaskObject,
    response_model_exclude_none=True,
    responses=_STATUS_ERRORS,
    summary="Task status and result",
)
async def get_generation(task_id: str, caller: QueryCaller, tasks: TaskServiceDep, response: Response) -> Response:
    if not is_task_id(task_id):
        raise NotFound("Task not found")
    # Rendered by the service (and kept rendered while it cannot change): TaskObject, without None fields.
    body = await tasks.status_answer(caller.tenant.id, task_id, caller.end_user_id)
    answer = Response(body, media_type="application/json")
    answer.headers.raw.extend(response.headers.raw)  # what the dependencies set (the rate headers)
    return answer
