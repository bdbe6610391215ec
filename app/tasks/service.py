"""The task rules: submit a generation upstream and keep its ledger row; answer status from the ledger or upstream."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.contract import (
    GenerationRequest,
    ImageRef,
    TaskError,
    TaskObject,
    TaskResult,
    images_reserved_for,
)
from app.contract import TaskStatus as PublicStatus
from app.core.clock import Clock, from_unix, to_unix
from app.core.db.engine import one_statement, reads_only
from app.core.db.errors import describe, is_database_unavailable
from app.core.errors import (
    Conflict,
    GatewayError,
    NotFound,
    NoUpstreamKey,
    UpstreamCredentialsRefused,
    UpstreamRejected,
    UpstreamTimeout,
)
from app.core.ids import new_id
from app.models import Tenant
from app.models.task import TERMINAL_STATUSES, Task, TaskStatus
from app.quotas import service as quotas
from app.tasks import admission, ending
from app.tasks import repository as repo
from app.tasks.cache import TaskAnswers
from app.tasks.images import ImageView, ShownImages
from app.tasks.singleflight import SingleFlight
from app.tenants.tokens import EndUser
from app.upstream.base import UpstreamAdapter, UpstreamServerError, UpstreamTask, parse_retry_after
from app.upstream.pool import PoolKey
from app.upstream.service import PoolService
from app.webhooks.callbacks import check_callback_url

log = logging.getLogger(__name__)

RESULT_TTL = dt.timedelta(hours=24)
# Called in the transaction that makes a task terminal, once per task, with the tenant's webhook URL as the end's
# statement read it (webhooks enqueue their event there, so the end and its delivery commit together).
EndHook = Callable[[AsyncSession, Task, str | None], Awaitable[None]]
IDEMPOTENCY_TTL = dt.timedelta(hours=24)
FIRST_LOOK = dt.timedelta(seconds=5)  # the reconciler's first look at a new task (the upstream's advice)
_LOOK_EVERY_S = (5.0, 10.0)  # then every 5-10 s, with jitter
_BACKOFF_S = (2.0, 5.0, 15.0, 30.0, 60.0)  # between create attempts of a waiting task (or Retry-After if longer)
MAX_SERVER_ERRORS = 3  # 5xx answers to a task's create calls (from any keys) after which it fails, refunded
_OUTCOME_UNKNOWN = (
    "The create call was sent but never answered, so the upstream may have made and billed the task; its "
    "reservation is charged. Ops can see such tasks in the admin API."
)
_LOST_IN_SANDBOX = "The demo's built-in sandbox upstream restarted and lost the task; nothing was charged."
_DEADLINE_EXCEEDED = "The task did not finish upstream in time; nothing was charged."


def _next_look() -> dt.timedelta:
    return dt.timedelta(seconds=random.uniform(*_LOOK_EVERY_S))


def _backoff(attempts: int) -> dt.timedelta:
    base = _BACKOFF_S[min(max(attempts - 1, 0), len(_BACKOFF_S) - 1)]
    return dt.timedelta(seconds=base * random.uniform(1.0, 1.25))


def _retry_after(error: GatewayError, now: dt.datetime) -> dt.datetime:
    value = next((v for k, v in (error.headers or {}).items() if k.lower() == "retry-after"), None)
    seconds = parse_retry_after(value, now)
    return now + dt.timedelta(seconds=seconds) if seconds else now


def _queue_expired(error: GatewayError | None) -> str:
    why = f" (last: {error.status_code} {error.code})" if error is not None else ""
    return f"The upstream could not take the task before its queue deadline{why}; nothing was charged."


def _request_hash(body: dict[str, Any], callback_url: str | None) -> str:
    """What an Idempotency-Key is bound to: the request as the gateway reads it (key order and spacing aside),
    its callback URL included (the same body to another callback is another request). Without a callback URL the
    hash is the body's alone, as before, so keys recorded by an earlier version still replay."""
    bound = body if callback_url is None else {**body, "callback_url": callback_url}
    return hashlib.sha256(json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class TaskService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        autocommit: AsyncEngine,
        adapter: UpstreamAdapter,
        keys: PoolService,
        clock: Clock,
        refresh_interval: dt.timedelta,
        *,
        quotas_enabled: bool = True,
        queue_deadline: dt.timedelta = dt.timedelta(minutes=10),
        task_deadline: dt.timedelta = dt.timedelta(minutes=30),
        submit_deadline: dt.timedelta = dt.timedelta(seconds=70),
        query_rps: float = 40.0,
    ) -> None:
        self._query_spacing = 1.0 / query_rps if query_rps > 0 else 0.0
        self._next_query: dict[str, float] = {}  # per upstream key: when this process's next scheduled look may go
        self._queue_deadline = queue_deadline
        self._task_deadline = task_deadline
        self._submit_deadline = submit_deadline  # longer than any create call can take
        self.on_waiting: Callable[[], None] | None = None  # the reconciler's wake-up: a task started waiting
        self._sessions = sessions
        # The submit path's single statements, each its own transaction (app/core/db/engine.autocommit_engine).
        self._autocommit = autocommit
        self._adapter = adapter
        self._keys = keys  # slots on keys, and what the upstream's answers say about them (in their transactions)
        self._pool = keys.pool  # the keys in memory: which one takes a task
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._quotas_enabled = quotas_enabled
        self._inflight: SingleFlight[Task] = SingleFlight()
        self._answers = TaskAnswers(refresh_interval)
        self._end_hooks: list[EndHook] = []
        # A completed task's images as callers see them (app/results: the kept copies); None: the upstream's URLs.
        self.images: ImageView | None = None
        # Upstream answers to create calls that the ledger could not take (database away): written by
        # `write_kept_answers` (the reconciler's sweep, before it claims anything) once the database is back.
        self._kept: dict[str, tuple[dict[str, Any], int]] = {}

    def on_end(self, hook: EndHook) -> None:
        """Run `hook(session, task, tenant_webhook_url)` in the transaction that makes a task terminal (completed or
        failed)."""
        self._end_hooks.append(hook)

    async def submit(
        self,
        tenant: Tenant,
        request: GenerationRequest,
        *,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        end_user: EndUser | None = None,
    ) -> Task:
        """Record the task, reserve its images and a slot on a pool key, send it upstream, record the answer.
        `end_user`: the end user of the token that submits (its images of the day count too, and the task is its).

        - The same `idempotency_key` with the same body within IDEMPOTENCY_TTL answers the task it made (nothing
          charged again); with another body, 409 `idempotency_key_reused`. Race-safe across replicas (a unique key).
        - A refusal that is the key's own (401/403, 429), a 5xx or an unreachable upstream moves the task to the
          next usable key; when none is left the task waits in the ledger (`waiting`, shown as `queued`) and the
          reconciler sends it later, until `queue_deadline`. Only the caller's own faults (4xx) fail at once.
        - A create that timed out after it was sent may exist upstream: it is kept (reservation included),
          flagged `outcome_unknown`, never resent and never silently refunded.
        - 503 `upstream_unavailable` (nothing written) only when no key at all can take a task.
        """
        callback_url = callback_url if callback_url is not None else request.callback_url
        check_callback_url(tenant, callback_url)  # 400 unless at an origin the tenant allows (app/webhooks)
        body = request.to_upstream()
        now = self._clock()
        request_hash = _request_hash(body, callback_url) if idempotency_key is not None else None
        if idempotency_key is not None:
            replay = await self._replay(tenant.id, idempotency_key, request_hash, now, end_user)
            if replay is not None:
                return replay
        try:
            key: PoolKey | None = self._pool.choose()
        except NoUpstreamKey:
            if not self._pool.recovers_by_itself():
                raise  # 503, nothing written: no key can take a task until ops act
            key = None  # every key cools down (429s) or is full: the task waits for one
        task = Task(
            id=new_id("task_img_"),
            tenant_id=tenant.id,
            upstream_key_id=key.id if key is not None else None,
            model=request.model,
            request=body,
            n=request.n,
            status=TaskStatus.SUBMITTING if key is not None else TaskStatus.WAITING,
            progress=0,
            client_business_id=request.client_business_id,
            created_at=now,
            updated_at=now,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            attempts=1 if key is not None else 0,
            deadline_at=now + self._queue_deadline,
            # SUBMITTING: found by the reconciler if this process dies before the create call is answered.
            next_check_at=now
            + (self._submit_deadline if key is not None else dt.timedelta(seconds=self._pool.retry_after_s())),
            callback_url=callback_url,
            end_user=None if end_user is None else end_user.id,
        )
        # The row, its reservation and its slot on the key are committed before the upstream call, so a crash
        # cannot lose a task the upstream accepted, nothing is spent upstream that the quota refused, and no
        # transaction (and no lock on the tenant's counters or the key's row) is held open across the network.
        try:
            taken = await self._admit(tenant, task, images_reserved_for(body), key, now, end_user)
        except IntegrityError:
            if idempotency_key is None:
                raise
            replay = await self._replay(tenant.id, idempotency_key, request_hash, now, end_user)
            if replay is None:
                raise
            return replay  # another request with the same key won the race
        if taken is None:
            log.info("task %s waits for an upstream key (every key cools down or is full)", task.id)
            if self.on_waiting is not None:
                self.on_waiting()
            return task
        return await self._send(task, taken, body)

    async def _admit(
        self, tenant: Tenant, task: Task, images: int, key: PoolKey | None, now: dt.datetime, end_user: EndUser | None
    ) -> PoolKey | None:
        """Write the task with its reservation and a slot on `key` in one statement (app/tasks/admission.py): the key
        it holds, or None when it waits (no key now: every one cools down or is full)."""
        reservation = quotas.reservation(tenant, task.id, images, now, end_user) if self._quotas_enabled else None
        if reservation is not None:
            quotas.refuse_unless_fitted(tenant, reservation, quotas.could_fit(reservation), now)
        waiting_check = now + dt.timedelta(seconds=self._pool.retry_after_s())
        try:
            async with self._autocommit.connect() as connection:
                slotted = await admission.admit(
                    connection,
                    task,
                    reservation,
                    key.id if key is not None else None,
                    check_sent=now + self._submit_deadline,
                    check_waiting=waiting_check,
                )
        except admission.AdmissionRefused as refused:
            assert reservation is not None
            quotas.refuse_unless_fitted(tenant, reservation, refused.fitted, now)
            raise  # not reached: a refusal leaves a period out
        if key is None or slotted:
            return key
        # The key was cooled or filled by another replica: another key, or the task waits.
        self._pool.mark_full(key.id)
        return await self._take_other_slot(task, {key.id}, waiting_check)

    async def _take_other_slot(self, task: Task, tried: set[str], waiting_check: dt.datetime) -> PoolKey | None:
        """A task admitted `waiting` because its key gave no slot: a slot on another key, or it stays waiting."""
        no_key: NoUpstreamKey | None = None
        async with self._sessions.begin() as session:
            try:
                taken = await self._keys.take_slot(session, self._pool.choose(exclude=tried), tried)
            except NoUpstreamKey as none:
                if self._pool.recovers_by_itself():
                    task.next_check_at = waiting_check
                    return None
                no_key = none
            else:
                await repo.update_task(
                    session,
                    task.id,
                    status=TaskStatus.SUBMITTING,
                    upstream_key_id=taken.id,
                    attempts=1,
                    next_check_at=task.created_at + self._submit_deadline,
                )
        if no_key is not None:  # nothing left that can take it until ops act: failed and refunded, and 503
            await self._fail(task.id, "upstream_unavailable", no_key.message, produced=0)
            raise no_key
        task.status, task.upstream_key_id, task.attempts = TaskStatus.SUBMITTING, taken.id, 1
        task.next_check_at = task.created_at + self._submit_deadline
        return taken

    async def _replay(
        self, tenant_id: str, key: str, request_hash: str | None, now: dt.datetime, end_user: EndUser | None
    ) -> Task | None:
        """The task an earlier request with this Idempotency-Key made, if it is recent; Conflict if its body differs,
        or if another end user (or a tenant key, for a token) made it: a token never sees another's task.
        A key older than IDEMPOTENCY_TTL is released (the new request makes a new task)."""
        async with self._sessions() as session:
            await reads_only(session)
            found = await repo.get_by_idempotency_key(session, tenant_id, key)
        if found is None:
            return None
        if found.created_at < now - IDEMPOTENCY_TTL:
            async with self._sessions.begin() as session:
                await repo.release_idempotency_key(session, found.id)
            return None
        if found.request_hash != request_hash or found.end_user != (None if end_user is None else end_user.id):
            raise Conflict(
                "This Idempotency-Key was used with a different request body; use a new key for a new request.",
                code="idempotency_key_reused",
                param="Idempotency-Key",
            )
        return found

    async def _send(self, task: Task, key: PoolKey, body: dict[str, Any]) -> Task:
        """Make the create call for a task that holds a slot on `key`; see `submit` for what each failure does."""
        task_id = task.id
        tried = {key.id}
        while True:
            try:
                upstream = await self._adapter.create(key.secret, body)
                break
            except GatewayError as e:
                server_error = isinstance(e, UpstreamServerError)
                first_server_error = server_error and not task.server_errors
                if server_error and (first_server_error or self._pool.serves_others(key)):
                    await self._count_server_error(task)
                # Only a task's first 5xx counts against its key's health: its later ones may be its request's own
                # doing, and one caller's failing requests must not cool the keys everyone's tasks go through.
                own = await self._keys.report_failure(key, e) if not server_error or first_server_error else False
                if server_error and task.server_errors >= MAX_SERVER_ERRORS:
                    log.warning("task %s failed: %d upstream 5xx answers of its own", task_id, task.server_errors)
                    await self._mark_refused(task_id, e)
                    raise
                if isinstance(e, UpstreamRejected) and e.status_code != 429 and not own:
                    log.warning("task %s refused upstream (%s %s): %s", task_id, e.status_code, e.code, e.message)
                    await self._mark_refused(task_id, e)
                    raise
                if isinstance(e, UpstreamTimeout):
                    return await self._mark_outcome_unknown(task_id, e)
                try:
                    key = await self._move(task_id, key, tried)
                    tried.add(key.id)
                    continue
                except NoUpstreamKey as none:
                    if isinstance(e, UpstreamCredentialsRefused):  # no key the upstream accepts: nothing to wait for
                        await self._mark_refused(task_id, none)
                        raise none from None
                    return await self._wait(task_id, key, e)
        await self._keys.report_success(key)
        now = self._clock()
        values, produced = _values_from_upstream(upstream, now, images_reserved_for(body))
        values.update(upstream_task_id=upstream.id, upstream_key_id=key.id, last_error=None, outcome_unknown=False)
        values["next_check_at"] = now + FIRST_LOOK if values["status"] not in TERMINAL_STATUSES else None
        try:
            return await self._record(task_id, values, produced, known=task)
        except Exception as e:
            if not is_database_unavailable(e):
                raise
            # The upstream accepted the task and its reservation is committed: the caller gets its task, and the
            # answer is written when the database is back (the task then goes on as any other). Answering 503 here
            # would charge a task the caller was told failed, and a retry without an Idempotency-Key twice.
            log.warning("task %s: upstream answer kept until the database is back (%s)", task_id, describe(e))
            self._kept[task_id] = (values, produced)
            for name, value in values.items():
                setattr(task, name, value)
            return task

    async def _count_server_error(self, task: Task) -> None:
        """One more 5xx that is the task's own: its first, or one while its key serves other tasks (the upstream
        works, this request does not). During an upstream outage the count stays at one and the task waits."""
        task.server_errors = (task.server_errors or 0) + 1
        async with one_statement(self._sessions) as session:
            await repo.update_task(session, task.id, server_errors=task.server_errors)

    @property
    def kept_answers(self) -> int:
        """Upstream answers this process holds until the ledger can take them."""
        return len(self._kept)

    async def write_kept_answers(self) -> None:
        """Write the upstream answers kept while the database was away; raises (keeping the rest) while it still is.

        A task another replica moved on meanwhile (its create deemed unanswered) is written only if still open."""
        for task_id, (values, produced) in list(self._kept.items()):
            await self._record(task_id, values, produced)
            del self._kept[task_id]
            log.info("task %s: kept upstream answer written", task_id)

    async def _wait(self, task_id: str, key: PoolKey, error: GatewayError) -> Task:
        """No key can take the task now: it waits in the ledger (slot freed) until the reconciler sends it, or fails
        and is refunded once its queue deadline has passed."""
        now = self._clock()
        retry = _retry_after(error, now)
        async with self._sessions.begin() as session:
            task = await repo.get(session, task_id)
            assert task is not None
            if task.deadline_at is not None and max(now, retry) >= task.deadline_at:
                expired = True
            else:
                expired = False
                await self._keys.release_slot(session, key.id)
                attempt_delay = _backoff(task.attempts)
                await repo.update_task(
                    session,
                    task_id,
                    status=TaskStatus.WAITING,
                    upstream_key_id=None,
                    next_check_at=max(retry, now + attempt_delay),
                    last_error=_text(f"{error.status_code} {error.code}: {error.message}")[:500],
                    lease_until=None,
                    updated_at=now,
                )
        if expired:
            return await self._fail(task_id, "upstream_unavailable", _queue_expired(error), produced=0)
        log.info("task %s waits for the upstream (%s %s)", task_id, error.status_code, error.code)
        if self.on_waiting is not None:
            self.on_waiting()
        async with self._sessions() as session:
            stored = await repo.get(session, task_id)
        assert stored is not None
        return stored

    async def _mark_outcome_unknown(self, task_id: str, error: GatewayError) -> Task:
        """The create call was sent and never answered: the upstream may have made (and will bill) the task. It is
        not resent (that could make it twice) nor refunded; it stays open, flagged, until its deadline, when it
        fails with its reservation charged, or until ops resolve it (the admin API lists such tasks)."""
        now = self._clock()
        async with self._sessions.begin() as session:
            task = await repo.get(session, task_id)
            assert task is not None
            await repo.update_task(
                session,
                task_id,
                outcome_unknown=True,
                last_error=_text(f"{error.status_code} {error.code}: {error.message}")[:500],
                next_check_at=task.created_at + self._task_deadline,
                updated_at=now,
            )
            task = await repo.get(session, task_id)
        log.warning("task %s: create call timed out after it was sent; outcome unknown, reservation kept", task_id)
        assert task is not None
        return task

    async def _fail(self, task_id: str, code: str, message: str, *, produced: int) -> Task:
        now = self._clock()
        values: dict[str, Any] = {
            "status": TaskStatus.FAILED,
            "progress": 0,
            "error_code": code,
            "error_message": message,
            "updated_at": now,
            "completed_at": now,
            "next_check_at": None,
        }
        return await self._record(task_id, values, produced)

    async def _move(self, task_id: str, old: PoolKey, tried: set[str]) -> PoolKey:
        """Move a task being submitted from a key that refused it to the next key: its slot moves with it."""
        async with self._sessions.begin() as session:
            new = self._pool.choose(exclude=tried)
            # Rows are locked in id order, so two tasks moving between the same two keys cannot deadlock.
            if old.id < new.id:
                await self._keys.release_slot(session, old.id)
                new = await self._keys.take_slot(session, new, tried)
            else:
                new = await self._keys.take_slot(session, new, tried)
                await self._keys.release_slot(session, old.id)
            await repo.set_upstream_key(session, task_id, new.id)
        return new

    async def status(self, tenant_id: str, task_id: str, end_user: str | None = None) -> Task:
        """A terminal task from the ledger; an open one refreshed from the upstream at most once per interval.
        `end_user`: only that end user's task (a token's read), else any of the tenant's."""
        async with self._sessions() as session:
            await reads_only(session)
            task = await repo.get_for_tenant(session, tenant_id, task_id, end_user)
        if task is None:
            raise NotFound("Task not found")
        return await self._refresh_if_due(task)

    def cached_answer(self, tenant_id: str, task_id: str, end_user: str | None = None) -> bytes | None:
        """The status call's JSON answer if memory holds one that cannot have changed, else None."""
        return self._answers.get(tenant_id, task_id, self._clock(), end_user)

    async def status_answer(self, tenant_id: str, task_id: str, end_user: str | None = None) -> bytes:
        """The status call's JSON answer: from memory while it cannot have changed (app/tasks/cache.py), else as
        `status` finds it (`end_user`: a token's read, of that end user's tasks only)."""
        body = self._answers.get(tenant_id, task_id, self._clock(), end_user)
        if body is None:
            task = await self.status(tenant_id, task_id, end_user)
            images = self.images if task.status == TaskStatus.COMPLETED else None
            shown = await images(task) if images is not None else None
            body = render(task, shown=shown)
            self._answers.put(task, body, until=shown.fresh_until if shown is not None else None)
        return body

    async def count_waiting(self) -> int:
        """Tasks waiting in the ledger for an upstream key (the `gateway_tasks_waiting` gauge)."""
        async with self._sessions() as session:
            await reads_only(session)
            return await repo.count_waiting(session)

    # --- the reconciler's work (app/tasks/reconciler.py claims, this does) -------------------------------------------
    async def claim_due(self, owner: str, limit: int, lease: dt.timedelta) -> list[Task]:
        """Lease up to `limit` open tasks whose next look is due (across replicas: each goes to one claimant)."""
        now = self._clock()
        async with self._sessions.begin() as session:
            return await repo.claim_due(session, now, now + lease, owner, limit)

    async def release_leases(self, task_ids: list[str], owner: str) -> None:
        """The claimant is done with these tasks: each is due again at its own next_check_at."""
        async with one_statement(self._sessions) as session:
            await repo.release_leases(session, task_ids, owner)

    async def reconcile(self, task: Task) -> None:
        """Do what a due task needs: send a waiting one, check an open one with the upstream (its pinned key),
        resolve a create that never got an answer, end one past its deadline. `task`: the row as `claim_due` leased
        it. This process holds its lease, so no other look or dispatch changed it since; a caller's status refresh
        may have ended it meanwhile, and the writes that could then meet it (the upstream's answer, a failure) are
        conditional on the task being open still."""
        if task.status in TERMINAL_STATUSES:
            return
        now = self._clock()
        if task.status == TaskStatus.WAITING:
            await self._dispatch(task, now)
        elif task.upstream_task_id is not None:
            await self._check(task, now)
        elif task.outcome_unknown:
            if task.next_check_at is not None and task.next_check_at <= now:
                charged = images_reserved_for(task.request)  # the create may have been billed in full
                await self._fail(task.id, "submit_outcome_unknown", _OUTCOME_UNKNOWN, produced=charged)
        else:  # `submitting` long after any create call could last: the process making it died mid-call
            log.warning("task %s: create call never answered (process stopped?); outcome unknown", task.id)
            await self._mark_outcome_unknown(task.id, UpstreamTimeout("The gateway stopped during the create call"))

    async def fail_lost_in_sandbox(self) -> int:
        """Demo mode, at start: the built-in sandbox kept its tasks in the previous process's memory, so every task
        it had is lost with it. Each is failed now and refunded (it stayed queued until its deadline, with a warning
        at every look). Returns how many."""
        async with self._sessions() as session:
            task_ids = await repo.sent_open_task_ids(session)
        for task_id in task_ids:
            await self._fail(task_id, "upstream_task_lost", _LOST_IN_SANDBOX, produced=0)
        if task_ids:
            log.warning("%d task(s) of the previous demo run failed, refunded: its sandbox forgot them", len(task_ids))
        return len(task_ids)

    async def _dispatch(self, task: Task, now: dt.datetime) -> None:
        if task.deadline_at is not None and now >= task.deadline_at:
            await self._fail(task.id, "upstream_unavailable", _queue_expired(None), produced=0)
            return
        try:
            key = self._pool.choose()
        except NoUpstreamKey as e:
            async with self._sessions.begin() as session:
                await repo.update_task(
                    session,
                    task.id,
                    next_check_at=now + _backoff(task.attempts),
                    last_error=e.message,
                    lease_until=None,
                )
            return
        async with self._sessions.begin() as session:
            taken = await self._keys.take_slot(session, key)
            await repo.update_task(
                session,
                task.id,
                status=TaskStatus.SUBMITTING,
                upstream_key_id=taken.id,
                attempts=task.attempts + 1,
                next_check_at=now + self._submit_deadline,
                updated_at=now,
            )
        with contextlib.suppress(GatewayError):  # refused for the caller's own fault: failed and refunded by _send
            task.status, task.upstream_key_id = TaskStatus.SUBMITTING, taken.id
            await self._send(task, taken, task.request)

    async def _check(self, task: Task, now: dt.datetime) -> None:
        past_deadline = now >= task.created_at + self._task_deadline
        ended = await self._refresh(task, force=True)
        if ended.status in TERMINAL_STATUSES:
            return
        if past_deadline:
            log.warning("task %s still open after %s: failed and refunded", task.id, self._task_deadline)
            await self._fail(task.id, "task_deadline_exceeded", _DEADLINE_EXCEEDED, produced=0)

    async def _refresh_if_due(self, task: Task) -> Task:
        if not self._needs_refresh(task):
            return task
        return await self._inflight.do(task.id, functools.partial(self._refresh, task))

    def _needs_refresh(self, task: Task) -> bool:
        if task.status in TERMINAL_STATUSES or task.upstream_task_id is None:
            return False
        return task.refreshed_at is None or self._clock() - task.refreshed_at >= self._refresh_interval

    async def _refresh(self, task: Task, *, force: bool = False) -> Task:
        """Ask the upstream about an open task, at most once per refresh interval across callers and replicas
        (`force`: the reconciler's scheduled look, which holds the task's lease, always asks; the look is recorded
        with its answer, in the same statement)."""
        now = self._clock()
        look: dict[str, Any] = {"refreshed_at": now, "next_check_at": now + _next_look()}
        if force:
            claimed = True
        else:
            async with one_statement(self._sessions) as session:
                claimed = await repo.claim_refresh(
                    session, task.id, now, self._refresh_interval, next_check_at=look["next_check_at"]
                )
            look = {}  # written by the claim
        if claimed:
            assert task.upstream_task_id is not None
            try:
                key = self._pool.get(task.upstream_key_id)  # the key that created it, whatever its state now
                if force:
                    await self._pace(key.id)
                upstream = await self._adapter.get(key.secret, task.upstream_task_id)
            except GatewayError as e:
                # A failed poll changes nothing: the caller sees the last known state and polls again.
                log.warning("status refresh of %s failed: %s", task.id, e.message)
                if not isinstance(e, NoUpstreamKey):
                    await self._keys.report_failure(key, e, call="status")
                async with one_statement(self._sessions) as session:
                    await repo.update_task(session, task.id, last_error=_text(e.message)[:500], **look)
            else:
                values, produced = _values_from_upstream(upstream, self._clock(), images_reserved_for(task.request))
                # The reconciler's task is its own copy (claim_due's row): written without reading it back.
                return await self._record(task.id, {**values, **look}, produced, known=task if force else None)
        async with self._sessions() as session:
            await reads_only(session)
            fresh = await repo.get(session, task.id)
        assert fresh is not None
        return fresh

    async def _pace(self, key_id: str) -> None:
        """Keep the reconciler's looks within the key's query budget (the upstream counts queries per key)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next_query.get(key_id, now))
        self._next_query[key_id] = slot + self._query_spacing
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _record(self, task_id: str, values: dict[str, Any], produced: int, *, known: Task | None = None) -> Task:
        """Write the upstream's view of a task; the call that makes it terminal also settles its quota (charging
        `produced` images: what a completed task made, 0 for a failed one unless its create may have been billed)
        and frees its slot on its upstream key. `known`: the task as this process holds it, updated in place
        rather than read back."""
        if values.get("status") not in TERMINAL_STATUSES:  # one statement, nothing to settle
            if known is not None:
                async with self._autocommit.connect() as connection:
                    if await repo.apply_update_to(connection, known, values):
                        return known
            async with one_statement(self._sessions) as session:
                stored = await repo.apply_update(session, task_id, values)
                if stored is None:  # already terminal: another caller or replica recorded the end first
                    stored = await repo.get(session, task_id)
            assert stored is not None
            return stored
        values = {**values, "next_check_at": None, "lease_until": None}
        async with self._sessions.begin() as session:
            # The end, the settle and the key's slot in one statement (app/tasks/ending.py).
            ended = await ending.end(session, task_id, values, produced, self._clock())
            if ended is None:  # already terminal: another caller or replica recorded the end first
                stored = await repo.get(session, task_id)
            else:
                stored, tenant_webhook_url = ended
                if stored.upstream_key_id is not None:
                    self._pool.slot_released(stored.upstream_key_id)
                for hook in self._end_hooks:
                    await hook(session, stored, tenant_webhook_url)
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


def _values_from_upstream(upstream: UpstreamTask, now: dt.datetime, reserved: int) -> tuple[dict[str, Any], int]:
    """The ledger's values for the upstream's view of a task, and the images it produced for the caller.

    A completed task hands out at most the `reserved` images it was charged for: an upstream that makes more than
    the body asked for (it should not) gives the caller nothing beyond what the quota covered."""
    status = TaskStatus(upstream.status)
    values: dict[str, Any] = {"status": status, "progress": upstream.progress, "updated_at": now}
    urls = upstream.urls[:reserved]
    if status == TaskStatus.COMPLETED:
        if len(upstream.urls) > reserved:
            log.warning("upstream task %s made %d images, %d reserved", upstream.id, len(upstream.urls), reserved)
        completed = from_unix(upstream.completed_at) or now
        values.update(
            result_urls=urls,
            completed_at=completed,
            expires_at=from_unix(upstream.expires_at) or completed + RESULT_TTL,
        )
    elif status == TaskStatus.FAILED:
        values.update(
            error_code=_text(upstream.error_code or "generation_failed")[:64],
            error_message=_text(upstream.error_message or "Generation failed"),
            completed_at=from_unix(upstream.completed_at) or now,
        )
    return values, len(urls)


def render(task: Task, *, created: bool = False, shown: ShownImages | None = None) -> bytes:
    """The status answer of a ledger row, as JSON (what FastAPI would send for `to_task_object` without Nones);
    `created`: the create call's answer."""
    return to_task_object(task, created=created, shown=shown).model_dump_json(exclude_none=True).encode()


def to_task_object(task: Task, *, created: bool = False, shown: ShownImages | None = None) -> TaskObject:
    """The contract's task object for a ledger row; `shown`: its images as callers see them (app/tasks/images.py),
    else the ledger's upstream URLs."""
    status = TaskStatus(task.status).public
    obj = TaskObject(
        id=task.id,
        model=task.model,
        status=status,
        progress=100 if status == PublicStatus.COMPLETED else task.progress,
        created_at=to_unix(task.created_at) or 0,
        client_business_id=task.client_business_id,
        metadata={} if created else None,
    )
    if status == PublicStatus.COMPLETED:
        urls = shown.urls if shown is not None else task.result_urls or []
        obj.completed_at = to_unix(task.completed_at)
        obj.expires_at = to_unix(shown.expires_at if shown is not None else task.expires_at)
        obj.result = TaskResult(data=[ImageRef(url=u) for u in urls])
        obj.url = urls[0] if urls else None
    elif status == PublicStatus.FAILED:
        obj.progress = 0
        obj.completed_at = to_unix(task.completed_at)
        obj.error = TaskError(code=task.error_code or "generation_failed", message=task.error_message or "")
    return obj
