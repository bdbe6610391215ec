"""The ledger as ops read it: tasks by tenant, status, and whether their create's outcome is unknown.

A read-only service on the kernel's sessions (the admin API and the CLI share it); no upstream is involved. A task
flagged `outcome_unknown` had its create call sent and never answered: the upstream may have made and billed it. It
keeps its reservation (`may_cost_images`) and fails charged at its deadline unless it resolves before.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import from_unix, to_unix
from app.core.db.engine import reads_only
from app.core.errors import NotFound
from app.core.ids import is_task_id
from app.core.pagination import DEFAULT_PAGE, Cursor, Page
from app.models.task import OPEN_STATUSES, Task, TaskStatus
from app.tenants.service import find

TASK_CURSOR = Cursor.of_ids("task_img_")
StatusFilter = Literal["open", "waiting", "queued", "in_progress", "completed", "failed"]


class LedgerTask(BaseModel):
    id: str
    tenant_id: str
    status: str = Field(description="The ledger's status (`waiting`/`submitting` are shown to callers as `queued`).")
    n: int
    outcome_unknown: bool = Field(description="The create call was sent and never answered (see docs/tasks.md).")
    may_cost_images: int = Field(description="Images the upstream may bill for it (its reservation) while unresolved.")
    attempts: int
    error_code: str | None
    last_error: str | None
    upstream_key_id: str | None
    created_at: int
    completed_at: int | None
    deadline_at: int | None

    @classmethod
    def of(cls, task: Task) -> LedgerTask:
        open_ = task.status not in (TaskStatus.COMPLETED, TaskStatus.FAILED)
        return cls(
            id=task.id,
            tenant_id=task.tenant_id,
            status=task.status,
            n=task.n,
            outcome_unknown=task.outcome_unknown,
            may_cost_images=task.n if task.outcome_unknown and open_ else 0,
            attempts=task.attempts,
            error_code=task.error_code,
            last_error=task.last_error,
            upstream_key_id=task.upstream_key_id,
            created_at=to_unix(task.created_at) or 0,
            completed_at=to_unix(task.completed_at),
            deadline_at=to_unix(task.next_check_at if task.outcome_unknown else task.deadline_at),
        )


class TaskDetail(LedgerTask):
    """One task as ops read it: the ledger row and its history with the upstream (what it was sent as, the key and
    task id the upstream gave, its calls, the last look and error)."""

    object: Literal["ledger_task"] = "ledger_task"
    model: str
    upstream_task_id: str | None = Field(description="The upstream's id of the task, once it made it.")
    server_errors: int = Field(description="Create calls the upstream answered with a 5xx.")
    error_message: str | None
    images: int = Field(description="Images the task produced.")
    updated_at: int
    refreshed_at: int | None = Field(description="The last look at the task upstream.")
    next_check_at: int | None = Field(description="When the task is next due (sent, or looked at upstream).")
    end_user: str | None = Field(description="The end user whose token made it; null: a tenant key.")

    @classmethod
    def of_task(cls, task: Task) -> TaskDetail:
        return cls(
            **LedgerTask.of(task).model_dump(),
            model=task.model,
            upstream_task_id=task.upstream_task_id,
            server_errors=task.server_errors,
            error_message=task.error_message,
            images=len(task.result_urls or []),
            updated_at=to_unix(task.updated_at) or 0,
            refreshed_at=to_unix(task.refreshed_at),
            next_check_at=to_unix(task.next_check_at),
            end_user=task.end_user,
        )


@dataclass(frozen=True)
class Activity:
    """The ledger's last hours, for the console's charts: tasks made per hour and per status, the failures and
    their codes, the tasks each upstream key took."""

    hours: list[int]  # the buckets' start (unix), oldest first
    created: list[int]  # tasks made in each hour
    failed: list[int]  # of which failed by now
    by_status: dict[str, int]
    failures: dict[str, int]  # error code -> tasks
    by_upstream_key: dict[str, int]


class LedgerPage(Page[LedgerTask]):
    """Tasks of the ledger, newest first, and what the open ones with an unknown create outcome may cost."""

    unresolved: int = Field(description="Open tasks with an unknown create outcome, across the filter's tenants.")
    unresolved_images: int = Field(description="What those may cost: the images they reserve.")


class TaskLedger:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def list(
        self,
        *,
        tenant_id: str | None = None,
        status: StatusFilter | None = None,
        outcome_unknown: bool | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> LedgerPage:
        """A page of tasks, newest first; `cursor` is the previous page's `next_cursor`. `tenant_id`: a tenant's id
        or name (404 `tenant_not_found` for an unknown one)."""
        page = TASK_CURSOR.request(limit, cursor)
        stmt = select(Task)
        unresolved = select(func.count(), func.coalesce(func.sum(Task.n), 0)).where(
            Task.outcome_unknown.is_(True), Task.status.in_(OPEN_STATUSES)
        )
        if tenant_id is not None:
            async with self._sessions() as session:
                await reads_only(session)
                tenant_id = (await find(session, tenant_id)).id
            stmt = stmt.where(Task.tenant_id == tenant_id)
            unresolved = unresolved.where(Task.tenant_id == tenant_id)
        if status == "open":
            stmt = stmt.where(Task.status.in_(OPEN_STATUSES))
        elif status == "queued":
            stmt = stmt.where(Task.status.in_((TaskStatus.QUEUED, TaskStatus.SUBMITTING, TaskStatus.WAITING)))
        elif status is not None:
            stmt = stmt.where(Task.status == status)
        if outcome_unknown is not None:
            stmt = stmt.where(Task.outcome_unknown.is_(outcome_unknown))
        if page.after is not None:  # ids sort by creation time (app/core/ids.py)
            stmt = stmt.where(Task.id < page.after)
        stmt = stmt.order_by(Task.id.desc()).limit(page.fetch)
        async with self._sessions() as session:
            await reads_only(session)
            rows = list((await session.execute(stmt)).scalars().all())
            count, images = (await session.execute(unresolved)).one()
        return LedgerPage.of(rows, page, LedgerTask.of, unresolved=int(count), unresolved_images=int(images))

    async def activity(self, until: dt.datetime, hours: int = 24) -> Activity:
        """Tasks made in the `hours` hours before `until`, bucketed by the hour (as the ledger holds them now)."""
        end = int(until.timestamp()) // 3600 * 3600 + 3600
        start = end - hours * 3600
        since = from_unix(start)
        hour = func.floor(func.extract("epoch", Task.created_at) / 3600).label("hour")
        by_hour = select(hour, Task.status, func.count()).where(Task.created_at >= since).group_by(hour, Task.status)
        codes = (
            select(Task.error_code, func.count())
            .where(Task.created_at >= since, Task.status == TaskStatus.FAILED)
            .group_by(Task.error_code)
        )
        keys = (
            select(Task.upstream_key_id, func.count())
            .where(Task.created_at >= since, Task.upstream_key_id.is_not(None))
            .group_by(Task.upstream_key_id)
        )
        starts = list(range(start, end, 3600))
        created, failed = dict.fromkeys(starts, 0), dict.fromkeys(starts, 0)
        by_status: dict[str, int] = {}
        async with self._sessions() as session:
            await reads_only(session)
            for bucket, status, count in (await session.execute(by_hour)).all():
                at = int(bucket) * 3600
                public = TaskStatus(status).public.value
                by_status[public] = by_status.get(public, 0) + count
                if at in created:
                    created[at] += count
                    failed[at] += count if status == TaskStatus.FAILED else 0
            failures = {code or "unknown": n for code, n in (await session.execute(codes)).all()}
            per_key = {str(key): n for key, n in (await session.execute(keys)).all()}
        return Activity(starts, list(created.values()), list(failed.values()), by_status, failures, per_key)

    async def get(self, task_id: str) -> TaskDetail:
        """One task of any tenant, or 404 `task_not_found`."""
        task = None
        if is_task_id(task_id):
            async with self._sessions() as session:
                await reads_only(session)
                task = await session.get(Task, task_id)
        if task is None:
            raise NotFound(f"Task {task_id!r} not found")
        return TaskDetail.of_task(task)
