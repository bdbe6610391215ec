"""Live task status: the status call as Server-Sent Events (a gateway extension; app/tasks/events.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response

from app.core.errors import NotFound
from app.core.ids import is_task_id
from app.quotas.deps import QueryCaller
from app.tasks.deps import TaskEventsDep
from app.tasks.events import MEDIA_TYPE, EventStreamResponse

router = APIRouter(prefix="/v1/images", tags=["generations"])

_ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"
_EXAMPLE = (
    'id: 1000\nevent: status\ndata: {"id":"task_img_01jd3x2k8v9m","object":"generation.task",'
    '"model":"doubao-seedream-4-0","status":"queued","progress":0,"created_at":1703884800}\n\n'
    ": keep-alive\n\n"
    'id: 2040\nevent: status\ndata: {"id":"task_img_01jd3x2k8v9m","object":"generation.task",'
    '"model":"doubao-seedream-4-0","status":"in_progress","progress":40,"created_at":1703884800}\n\n'
)


# One event of the stream (OpenAPI 3.1: a text/event-stream's `schema` describes each event, as its fields).
_EVENT = {
    "type": "object",
    "required": ["event", "data", "id"],
    "properties": {
        "event": {"const": "status"},
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The task's step, for `Last-Event-ID`."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/TaskObject"},
            "description": "The status call's task object, as JSON on one line.",
        },
    },
}


def _error(description: str) -> dict[str, Any]:
    # Errors are answered before the stream starts, as JSON (`model=` would document them as the stream's type).
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _ENVELOPE_REF}}}}


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The event stream, closed after the task's final event (`completed` or `failed`). Each "
        "event: `id` (the task's step, for `Last-Event-ID`), `event: status`, `data` (the status call's task "
        "object, as JSON on one line). A `: keep-alive` comment when no event was sent for a while (15 s).",
        "content": {MEDIA_TYPE: {"schema": _EVENT, "example": _EXAMPLE}},
    },
    204: {"description": "The task has ended and `Last-Event-ID` is its final event: nothing more to send"},
    401: _error("Missing or invalid API key"),
    403: _error("The API key or token lacks the `read` scope, or the token's origin is refused"),
    404: _error("Task not found (also another tenant's task, or another end user's for a token)"),
    429: _error("Rate limited (per-minute status queries, counted once per connection), with `Retry-After`"),
}


@router.get(
    "/generations/{task_id}/events",
    response_class=EventStreamResponse,
    status_code=200,
    responses=_RESPONSES,
    summary="Task status as Server-Sent Events, until the task ends",
    description="The status call as a stream: an event now, then one whenever the status or the progress "
    "changes, until the task ends. Authenticated and rate-counted like the status call (once per connection).",
)
async def generation_events(
    task_id: str,
    caller: QueryCaller,
    events: TaskEventsDep,
    response: Response,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="The `id` of the last event received (a browser's EventSource sends it when it "
            "reconnects): only later events follow.",
        ),
    ] = None,
) -> Response:
    if not is_task_id(task_id):
        raise NotFound("Task not found")
    # 404 before anything is streamed (a token: only its own end user's tasks)
    stream = await events.open(caller.tenant.id, task_id, last_event_id, caller.end_user_id)
    answer: Response = Response(status_code=204) if stream is None else EventStreamResponse(stream)
    answer.headers.raw.extend(response.headers.raw)  # what the dependencies set (the rate headers)
    return answer
