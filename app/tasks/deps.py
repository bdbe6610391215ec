"""The task service, and the event streams, as dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.tasks.events import TaskEvents
from app.tasks.service import TaskService


async def get_task_service(request: Request) -> TaskService:
    service: TaskService = request.app.state.tasks
    return service


TaskServiceDep = Annotated[TaskService, Depends(get_task_service)]


async def get_task_events(request: Request) -> TaskEvents:
    events: TaskEvents = request.app.state.task_events
    return events


TaskEventsDep = Annotated[TaskEvents, Depends(get_task_events)]
