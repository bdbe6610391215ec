"""Event bodies in the upstream's shape (contract section 6): its vocabulary, not the polling API's."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from app.core.clock import to_unix
from app.core.ids import new_id
from app.models.task import Task, TaskStatus

API_VERSION = "v1"
COMPLETED = "generation.completed"
FAILED = "generation.failed"
TEST = "endpoint.test"
EVENT_TYPES = (COMPLETED, FAILED, TEST)


def new_event_id() -> str:
    return new_id("evt_")


def encode(event: dict[str, Any]) -> str:
    """The exact text that is signed and sent (compact JSON, UTF-8)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def task_event(event_id: str, task: Task, now: dt.datetime) -> tuple[str, dict[str, Any]]:
    """(type, body) of the event announcing a terminal task; the task id is the gateway's."""
    completed = TaskStatus(task.status) == TaskStatus.COMPLETED
    urls = task.result_urls or []
    data: dict[str, Any] = {
        "task_id": task.id,
        "client_business_id": task.client_business_id,
        "task_type": "image",
        "model": task.model,
        "status": "SUCCESS" if completed else "FAILURE",
        "progress": "100%" if completed else f"{max(0, min(task.progress or 0, 100))}%",
        "result": {"type": "image", "data": [{"url": u} for u in urls]} if completed else None,
        "error": None
        if completed
        else {"code": task.error_code or "generation_failed", "message": task.error_message or ""},
        "submitted_at": to_unix(task.created_at),
        "finished_at": to_unix(task.completed_at) or to_unix(now),
    }
    kind = COMPLETED if completed else FAILED
    return kind, {"id": event_id, "type": kind, "api_version": API_VERSION, "created_at": to_unix(now), "data": data}


def with_image_urls(body: str, urls: list[str]) -> str:
    """A completed task's event (`encode`d) with these image URLs instead of its own (the kept copies' links)."""
    event: dict[str, Any] = json.loads(body)
    result = event.get("data", {}).get("result")
    if event.get("type") != COMPLETED or not isinstance(result, dict):
        return body
    result["data"] = [{"url": u} for u in urls]
    return encode(event)


def test_event(event_id: str, tenant_id: str, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": TEST,
        "api_version": API_VERSION,
        "created_at": to_unix(now),
        "data": {"tenant_id": tenant_id, "message": "A test event from the Seedream Gateway."},
    }
