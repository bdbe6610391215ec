"""The task rules: submit a generation upstream and keep its ledger row; answer status from the ledger or upstream."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.contract import (
    TERMINAL_STATUSES,
    GenerationRequest,
    ImageRef,
    TaskError,
    TaskObject,
    TaskResult,
    TaskStatus,
)
from app.core.clock import Clock, from_unix, to_unix
from app.core.db.engine import reads_only
from app.core.errors import GatewayError, NotFound, NoUpstreamKey, UpstreamRejected
from app.core.ids import new_id
from app.models import Tenant
from app.models.task import Task
from app.quotas import service as quotas
from app.tasks import repository as repo
from app.tasks.cache import TaskAnswers
from app.tasks.singleflight import SingleFlight
from app.upstream.base import UpstreamAdapter, UpstreamTask
from app.upstream.pool import PoolKey, UpstreamKeyPool

log = logging.getLogger(__name__)

RESULT_TTL = dt.timedelta(hours=24)
# Called in the transaction that makes a task terminal, once per task (webhooks enqueue their event there, so the
# end and its delivery commit together).
EndHook = Callable[[AsyncSession, Task], Awaitable[None]]
SWEEP_CONCURRENCY = 10


class TaskService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        adapter: UpstreamAdapter,
        pool: UpstreamKeyPool,
        clock: Clock,
        refresh_interval: dt.timedelta,
        *,
        quotas_enabled: bool = True,
    ) -> None:
        self._sessions = sessions
        self._adapter = adapter
        self._pool = pool
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._quotas_enabled = quotas_enabled
        self._inflight: SingleFlight[Task] = SingleFlight()
        self._answers = TaskAnswers(refresh_interval)
        self._end_hooks: list[EndHook] = []

    def on_end(self, hook: EndHook) -> None:
        """Run `hook(session, task)` in the transaction that makes a task terminal (completed or failed)."""
        self._end_hooks.append(hook)

    async def submit(self, tenant: Tenant, request: GenerationRequest) -> Task:
        """Record the task, reserve its images and a slot on a pool key, send it upstream, record the answer.

        A refusal that is the key's own (401/403, 429) marks the key for every replica and the task moves to
        another key before the tenant hears of it; 503 `upstream_unavailable` only when no key can take it.
        """
        key = self._pool.choose()  # nothing is written when no key can take the task
        body = request.to_upstream()
        now = self._clock()
        task = Task(
            id=new_id("task_img_"),
            tenant_id=tenant.id,
            upstream_key_id=key.id,
            model=request.model,
            request=body,
            n=request.n,
            status=TaskStatus.SUBMITTING,
            progress=0,
            client_business_id=request.client_business_id,
            created_at=now,
            updated_at=now,
        )
        # The row, its reservation and its slot on the key are committed before the upstream call, so a crash
        # cannot lose a task the upstream accepted, nothing is spent upstream that the quota refused, and no
        # transaction (and no lock on the tenant's counters or the key's row) is held open across the network.
        # The key's slot is taken last: its row is locked only for the commit.
        async with self._sessions.begin() as session:
            await repo.insert(session, task)
            if self._quotas_enabled:
                await quotas.reserve(session, tenant, task.id, request.max_output_images, now)
            taken = await self._pool.take_slot(session, key)
            if taken.id != key.id:
                await repo.set_upstream_key(session, task.id, taken.id)
        key, tried = taken, {taken.id}
        while True:
            try:
                upstream = await self._adapter.create(key.secret, body)
                break
            except GatewayError as e:
                error: GatewayError = e
                if await self._pool.report_failure(key, e):
                    try:
                        key = await self._move(task.id, key, tried)
                        tried.add(key.id)
                        continue
                    except NoUpstreamKey as none:
                        error = none
                log.warning(
                    "task %s of tenant %s not accepted upstream (%s %s): %s",
                    task.id,
                    tenant.id,
                    error.status_code,
                    error.code,
                    error.message,
                )
                await self._mark_refused(task.id, error)
                raise error from None
        await self._pool.report_success(key)
        values = _values_from_upstream(upstream, self._clock())
        values["upstream_task_id"] = upstream.id
        return await self._record(task.id, values, len(upstream.urls))

    async def _move(self, task_id: str, old: PoolKey, tried: set[str]) -> PoolKey:
        """Move a task being submitted from a key that refused it to the next key: its slot moves with it."""
        async with self._sessions.begin() as session:
            new = self._pool.choose(exclude=tried)
            # Rows are locked in id order, so two tasks moving between the same two keys cannot deadlock.
            if old.id < new.id:
                await self._pool.release_slot(session, old.id)
                new = await self._pool.take_slot(session, new, tried)
            else:
                new = await self._pool.take_slot(session, new, tried)
                await self._pool.release_slot(session, old.id)
            await repo.set_upstream_key(session, task_id, new.id)
        return new

    async def status(self, tenant_id: str, task_id: str) -> Task:
        """A terminal task from the ledger; an open one refreshed from the upstream at most once per interval."""
        async with self._sessions() as session:
            await reads_only(session)
            task = await repo.get_for_tenant(session, tenant_id, task_id)
        if task is None:
            raise NotFound("Task not found")
        return await self._refresh_if_due(task)

    def cached_answer(self, tenant_id: str, task_id: str) -> bytes | None:
        """The status call's JSON answer if memory holds one that cannot have changed, else None."""
        return self._answers.get(tenant_id, task_id, self._clock())

    async def status_answer(self, tenant_id: str, task_id: str) -> bytes:
        """The status call's JSON answer: from memory while it cannot have changed (app/tasks/cache.py), else as
        `status` finds it."""
        body = self._answers.get(tenant_id, task_id, self._clock())
        if body is None:
            task = await self.status(tenant_id, task_id)
            body = render(task)
            self._answers.put(task, body)
        return body

    async def refresh_stale(self, older_than: dt.timedelta, limit: int) -> int:
        """Refresh open tasks nobody has polled for `older_than`, so they end (and settle) without a caller."""
        async with self._sessions() as session:
            ids = await repo.stale_open_task_ids(session, self._clock() - older_than, limit)
        gate = asyncio.Semaphore(SWEEP_CONCURRENCY)

        async def one(task_id: str) -> None:
            async with gate:
                async with self._sessions() as session:
                    task = await repo.get(session, task_id)
                if task is not None:
                    await self._refresh_if_due(task)

        await asyncio.gather(*(one(task_id) for task_id in ids))
        return len(ids)

    async def fail_interrupted_submits(self, older_than: dt.timedelta, limit: int) -> int:
        """Fail and refund tasks whose create call never got an answer recorded (the process died mid-call).

        Without this their reservation and in-flight slot would stay taken for good. `older_than` must exceed
        the longest a create call can take, so a submit still in progress elsewhere is never touched.
        """
        async with self._sessions() as session:
            ids = await repo.interrupted_submit_ids(session, self._clock() - older_than, limit)
        for task_id in ids:
            now = self._clock()
            log.warning("task %s: create call never answered (process stopped?); failed and refunded", task_id)
            await self._record(
                task_id,
                {
                    "status": TaskStatus.FAILED,
                    "progress": 0,
                    "error_code": "submit_interrupted",
                    "error_message": "The gateway stopped before the upstream answered; nothing was charged.",
                    "updated_at": now,
                    "completed_at": now,
                },
                0,
            )
        return len(ids)

    async def _refresh_if_due(self, task: Task) -> Task:
        if not self._needs_refresh(task):
            return task
        return await self._inflight.do(task.id, functools.partial(self._refresh, task))

    def _needs_refresh(self, task: Task) -> bool:
        if task.status in TERMINAL_STATUSES or task.upstream_task_id is None:
            return False
        return task.refreshed_at is None or self._clock() - task.refreshed_at >= self._refresh_interval

    async def _refresh(self, task: Task) -> Task:
        now = self._clock()
        async with self._sessions.begin() as session:
            claimed = await repo.claim_refresh(session, task.id, now, self._refresh_interval)
        if claimed:
            assert task.upstream_task_id is not None
            try:
                key = self._pool.get(task.upstream_key_id)  # the key that created it, whatever its state now
            except GatewayError as e:
                log.warning("status refresh of %s failed: %s", task.id, e.message)
            else:
                try:
                    upstream = await self._adapter.get(key.secret, task.upstream_task_id)
                except GatewayError as e:
                    # A failed poll changes nothing: the caller sees the last known state and polls again.
                    log.warning("status refresh of %s failed: %s", task.id, e.message)
                    await self._pool.report_failure(key, e, call="status")
                else:
                    return await self._record(
                        task.id, _values_from_upstream(upstream, self._clock()), len(upstream.urls)
                    )
        async with self._sessions() as session:
            fresh = await repo.get(session, task.id)
        assert fresh is not None
        return fresh

    async def _record(self, task_id: str, values: dict[str, Any], produced: int) -> Task:
        """Write the upstream's view of a task; the call that makes it terminal also settles its quota and frees
        its slot on its upstream key."""
        async with self._sessions.begin() as session:
            stored = await repo.apply_update(session, task_id, values)
            if stored is None:  # already terminal: another caller or replica recorded the end first
                stored = await repo.get(session, task_id)
            elif stored.status in TERMINAL_STATUSES:
                await quotas.settle(
                    session, task_id, produced if stored.status == TaskStatus.COMPLETED else 0, self._clock()
                )
                if stored.upstream_key_id is not None:
                    await self._pool.release_slot(session, stored.upstream_key_id)
                for hook in self._end_hooks:
                    await hook(session, stored)
        assert stored is not None
        return stored

    async def _mark_refused(self, task_id: str, error: GatewayError) -> None:
        """The upstream refused or never answered: the task is failed, with the reason kept in the ledger."""
        values: dict[str, Any] = {
            "status": TaskStatus.FAILED,
            "progress": 0,
            "error_code": _text(str(error.code))[:64],
            "error_message": _text(error.message),
            "updated_at": self._clock(),
            "completed_at": self._clock(),
        }
        if not isinstance(error, UpstreamRejected):
            values["error_code"] = "upstream_error"
        await self._record(task_id, values, 0)


def _text(value: str) -> str:
    """Upstream text as a text column takes it: PostgreSQL refuses NUL characters."""
    return value.replace("\x00", "\ufffd")


def _values_from_upstream(upstream: UpstreamTask, now: dt.datetime) -> dict[str, Any]:
    values: dict[str, Any] = {"status": upstream.status, "progress": upstream.progress, "updated_at": now}
    if upstream.status == TaskStatus.COMPLETED:
        completed = from_unix(upstream.completed_at) or now
        values.update(
            result_urls=upstream.urls,
            completed_at=completed,
            expires_at=from_unix(upstream.expires_at) or completed + RESULT_TTL,
        )
    elif upstream.status == TaskStatus.FAILED:
        values.update(
            error_code=_text(upstream.error_code or "generation_failed")[:64],
            error_message=_text(upstream.error_message or "Generation failed"),
            completed_at=from_unix(upstream.completed_at) or now,
        )
    return values


def render(task: Task) -> bytes:
    """The status answer of a ledger row, as JSON (what FastAPI would send for `to_task_object` without Nones)."""
    return to_task_object(task).model_dump_json(exclude_none=True).encode()


def to_task_object(task: Task, *, created: bool = False) -> TaskObject:
    """The contract's task object for a ledger row."""
    status = TaskStatus(task.status).public
    obj = TaskObject(
        id=task.id,
        model=task.model,
        status=status,
        progress=100 if status == TaskStatus.COMPLETED else task.progress,
        created_at=to_unix(task.created_at) or 0,
        client_business_id=task.client_business_id,
        metadata={} if created else None,
    )
    if status == TaskStatus.COMPLETED:
        urls = task.result_urls or []
        obj.completed_at = to_unix(task.completed_at)
        obj.expires_at = to_unix(task.expires_at)
        obj.result = TaskResult(data=[ImageRef(url=u) for u in urls])
        obj.url = urls[0] if urls else None
    elif status == TaskStatus.FAILED:
        obj.progress = 0
        obj.completed_at = to_unix(task.completed_at)
        obj.error = TaskError(code=task.error_code or "generation_failed", message=task.error_message or "")
    return obj
