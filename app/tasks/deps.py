"""The task service as a dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.tasks.service import TaskService


async def get_task_service(request: Request) -> TaskService:
    service: TaskService = request.app.state.tasks
    return service


TaskServiceDep = Annotated[TaskService, Depends(get_task_service)]
