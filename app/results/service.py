"""Kept results: the rules. A completed task's images are copied from the upstream into the organisation's store,
handed out as signed links while kept, and deleted when the tenant's retention ends.

- Enqueue (`task_ended`, a TaskService end hook): a pending copy per image, written in the transaction that makes
  the task completed, so a task's end and its copies commit together; a tenant whose retention is 0 keeps nothing.
  Nothing else waits: the status answer and the settle are as before.
- Copy (`copy_due`, every replica's worker): lease the due copies (FOR UPDATE SKIP LOCKED, as the reconciler claims
  tasks), fetch each under the SSRF rule (app/results/fetch.py), stream it into the store (written whole, then
  published: only then does the row say `kept`), and retry with backoff until the upstream's link expires; a copy
  still failing then is `lost` (the task stays completed). The store away: copies wait, one log line per outage.
- Show (`shown`, the tasks' ImageView): a kept image as a signed, expiring link (served by the gateway for the local
  store, presigned for S3), any other as the upstream's link; `expires_at` the first of them to stop working. The
  answer is kept rendered only as long as it is true (a copy about to be published: the refresh interval).
- Webhooks: a completed task's events wait (GATEWAY_RESULTS_WEBHOOK_HOLD_S at most) for its copies, and go with
  the same links the status answer shows.
- Retention (`sweep_due`): images past their tenant's retention are deleted from the store and marked `deleted`;
  ops can end a tenant's retention at once (`delete_tenant_images`) or change it (`set_retention`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.service import AuditService
from app.core import metrics, outage
from app.core.background import Wakeup
from app.core.clock import Clock
from app.core.db.engine import reads_only
from app.core.errors import GatewayError, NotFound, Unauthorized
from app.core.ids import is_task_id
from app.core.security import KeyMaterial
from app.models import KeptImage, KeptState, Task
from app.models.task import TaskStatus
from app.results import repository as repo
from app.results.fetch import Fetcher, FetchError
from app.results.store import ResultStore, StoreError
from app.tasks.images import ShownImages
from app.tenants.service import find as find_tenant
from app.webhooks.service import WebhookService

log = logging.getLogger(__name__)

# A copy's lease, renewed every third of it while the copy goes on: a process that dies mid-copy leaves its copies to
# the others (or to itself, restarted) within this.
LEASE = dt.timedelta(seconds=30)
COPY_TIMEOUT_S = 600.0
_BACKOFF_S = (5.0, 15.0, 60.0, 300.0, 900.0, 1800.0)
_STORE_RETRY_S = 30.0  # a copy that failed on the store is due again soon: the store's return is what it waits for
_LAST_TRY_MARGIN = dt.timedelta(minutes=1)  # the last attempt goes this long before the upstream's link expires
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}
_SWEEP_BATCH = 100
_CLEAN_PARTIAL_EVERY = dt.timedelta(minutes=10)
LINK_PATH = "/v1/results/{task_id}/{index}"
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def _backoff(attempts: int) -> dt.timedelta:
    base = _BACKOFF_S[min(max(attempts - 1, 0), len(_BACKOFF_S) - 1)]
    return dt.timedelta(seconds=base * random.uniform(1.0, 1.25))


@dataclass(frozen=True)
class Served:
    """How to answer a link: a local file, or a redirect to a presigned URL."""

    content_type: str
    path: Path | None = None
    redirect: str | None = None
    max_age_s: int = 0


@dataclass(frozen=True)
class StorageUsage:
    images: int
    bytes: int
    pending: int
    retention_days: int


class ResultService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        store: ResultStore | None,
        fetcher: Fetcher | None,
        keys: KeyMaterial,
        clock: Clock,
        *,
        base_url: str,
        link_ttl: dt.timedelta,
        default_days: int,
        refresh_interval: dt.timedelta,
        webhook_hold: dt.timedelta = dt.timedelta(0),
        webhooks: WebhookService | None = None,
        concurrency: int = 4,
        max_bytes_per_s: float = 0.0,
        owner: str = "results",
        lease: dt.timedelta = LEASE,
    ) -> None:
        self._lease = lease
        self._sessions = sessions
        self.store = store
        self._fetcher = fetcher
        self._keys = keys
        self._clock = clock
        self._base_url = base_url.rstrip("/")
        self._link_ttl = link_ttl
        self.default_days = default_days
        self._refresh_interval = refresh_interval
        self._webhook_hold = webhook_hold
        self._webhooks = webhooks
        self._concurrency = concurrency
        self._pace = _Pace(max_bytes_per_s)
        self._owner = owner
        self._audit = AuditService(sessions, clock)
        self._tracker = outage.tracker(outage.RESULT_STORE)
        self._work = Wakeup("gw_results_wake")
        self._cleaned_at: dt.datetime | None = None

    @property
    def enabled(self) -> bool:
        return self.store is not None

    # --- the task end hook (TaskService.on_end) -------------------------------------------------------------------
    async def task_ended(self, session: AsyncSession, task: Task, _tenant_webhook_url: str | None = None) -> None:
        """A completed task's images, each a pending copy, in the transaction that ends it; its webhook events wait
        for them (at most the hold)."""
        if self.store is None or task.status != TaskStatus.COMPLETED or not task.result_urls:
            return
        now = self._clock()
        completed = task.completed_at or now
        enqueued = await repo.enqueue(
            session,
            task_id=task.id,
            tenant_id=task.tenant_id,
            urls=list(task.result_urls),
            completed_at=completed,
            give_up_at=task.expires_at or completed + dt.timedelta(hours=24),
            default_days=self.default_days,
            now=now,
        )
        if not enqueued:
            return
        if self._webhooks is not None and self._webhook_hold > dt.timedelta(0):
            await self._webhooks.hold_task_events(session, task.id, now + self._webhook_hold)
        self._work.after_commit(session)

    async def wait_for_work(self, timeout_s: float) -> None:
        await self._work.wait(timeout_s)

    # --- what callers see (the tasks' ImageView) ------------------------------------------------------------------
    async def shown(self, task: Task) -> ShownImages | None:
        """A completed task's images as callers see them; None when it has nothing kept nor being kept."""
        if self.store is None:
            return None
        async with self._sessions() as session:
            await reads_only(session)
            rows = await repo.of_task(session, task.id)
        return await self._shown(task, rows, self._clock())

    async def _shown(self, task: Task, rows: list[KeptImage], now: dt.datetime) -> ShownImages | None:
        if not rows:
            return None
        by_index = {row.index: row for row in rows}
        urls = list(task.result_urls or [])
        expiries: list[dt.datetime] = []
        pending = False
        kept_until: list[dt.datetime] = []
        for index, upstream_url in enumerate(urls):
            row = by_index.get(index)
            if row is not None and _is_kept(row, now):
                assert row.keep_until is not None
                urls[index], expires = await self._link(row, now)
                expiries.append(expires)
                kept_until.append(row.keep_until)
                continue
            if row is not None and row.state == KeptState.PENDING and (row.keep_until or now) > now:
                pending = True
            urls[index] = upstream_url
            if task.expires_at is not None:
                expiries.append(task.expires_at)
        expires_at = min(expiries) if expiries else task.expires_at
        if pending:  # a copy may be published any moment: rendered again after the refresh interval
            fresh_until: dt.datetime | None = now + self._refresh_interval
        elif kept_until:  # links live link_ttl: handed out with at least half of it left, and never past retention
            fresh_until = min([now + min(self._link_ttl / 2, dt.timedelta(minutes=5)), *kept_until])
        else:
            fresh_until = None
        return ShownImages(urls=urls, expires_at=expires_at, fresh_until=fresh_until)

    async def _link(self, row: KeptImage, now: dt.datetime) -> tuple[str, dt.datetime]:
        """A kept image's link and when it stops working."""
        assert self.store is not None and row.store_key is not None and row.keep_until is not None
        expires = min(now + self._link_ttl, row.keep_until).replace(microsecond=0)
        if self.store.kind == "s3":
            seconds = max(1, int((expires - now).total_seconds()))
            return await self.store.presign(row.store_key, dt.timedelta(seconds=seconds)), expires
        return self.signed_link(row.task_id, row.index, int(expires.timestamp())), expires

    def signed_link(self, task_id: str, index: int, expires: int) -> str:
        path = LINK_PATH.format(task_id=task_id, index=index)
        return f"{self._base_url}{path}?expires={expires}&sig={self._keys.sign_link(f'{task_id}/{index}/{expires}')}"

    # --- serving a link -------------------------------------------------------------------------------------------
    def link_problem(self, task_id: str, index: int, expires: str | None, sig: str | None) -> str | None:
        """Why a link's signature does not open the image (None: it does)."""
        if expires is None or sig is None:
            return "The link is not signed: use a link from the task's status answer, or your API key."
        if not expires.isdigit() or not _SIGNATURE.fullmatch(sig):
            return "The link's signature is invalid."
        if not self._keys.link_signature_ok(f"{task_id}/{index}/{expires}", sig):
            return "The link's signature is invalid."
        if int(expires) <= int(self._clock().timestamp()):
            return "The link has expired: read the task again for a fresh one, or use your API key."
        return None

    async def serve(self, task_id: str, index: int, *, tenant_id: str | None, end_user: str | None = None) -> Served:
        """The kept image `index` of `task_id`: to anyone with a valid signature (`tenant_id` None, checked by
        `link_problem`), else to its tenant only, and with an end-user token to that end user only (anyone else's
        image is 404, as its task is)."""
        if self.store is None or not is_task_id(task_id) or not 0 <= index < 64:
            raise _image_not_found()
        async with self._sessions() as session:
            await reads_only(session)
            row = await repo.one(session, task_id, index)
            owner = await repo.end_user_of(session, task_id) if end_user is not None else None
        now = self._clock()
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id) or not _is_kept(row, now):
            raise _image_not_found()
        if end_user is not None and owner != end_user:
            raise _image_not_found()
        assert row.store_key is not None and row.keep_until is not None
        content_type = row.content_type or "application/octet-stream"
        if self.store.kind == "s3":
            url, _ = await self._link(row, now)
            return Served(content_type, redirect=url)
        path = self.store.path(row.store_key)
        if not path.is_file():
            raise _image_not_found()
        return Served(content_type, path=path, max_age_s=max(0, int((row.keep_until - now).total_seconds())))

    # --- copying --------------------------------------------------------------------------------------------------
    async def run_once(self) -> int:
        """One round of the worker: copies due, then images past their retention; the number handled. Nothing is
        claimed while the store is away (it is probed first)."""
        if self.store is None:
            return 0
        now = self._clock()
        async with self._sessions() as session:  # an idle tick is one read, no transaction
            await reads_only(session)
            if not await repo.any_due(session, now):
                self._clean_partial(now)
                return 0
        if self._tracker.is_down and not await self.probe():
            return 0
        handled = await self.copy_due()
        handled += await self.sweep_due()
        self._clean_partial(now)
        return handled

    def _clean_partial(self, now: dt.datetime) -> None:
        if self.store is None or self.store.kind != "local":
            return
        if self._cleaned_at is not None and now - self._cleaned_at < _CLEAN_PARTIAL_EVERY:
            return
        self._cleaned_at = now
        removed = self.store.clean_partial()
        if removed:
            log.info("removed %d staging files of copies that died mid-write", removed)

    async def copy_due(self) -> int:
        """Lease the copies due and make each; the number handled."""
        handled = 0
        gate = asyncio.Semaphore(self._concurrency)
        while True:
            now = self._clock()
            async with self._sessions.begin() as session:
                claimed = await repo.claim_copies(session, now, now + self._lease, self._owner, self._concurrency * 2)
            if not claimed:
                return handled

            async def one(image: KeptImage) -> None:
                async with gate:
                    renewing = asyncio.ensure_future(self._renew_lease(image))
                    try:
                        await self._copy(image)
                    finally:
                        renewing.cancel()

            await asyncio.gather(*(one(image) for image in claimed))
            handled += len(claimed)
            if len(claimed) < self._concurrency * 2 or self._tracker.is_down:
                return handled

    async def _renew_lease(self, image: KeptImage) -> None:
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                async with self._sessions.begin() as session:
                    await repo.renew(session, image, self._owner, self._clock() + self._lease)
            except Exception as e:  # the database away: the copy goes on, its outcome is written if it comes back
                log.debug("lease of %s/%d not renewed: %s", image.task_id, image.index, e)

    async def _copy(self, image: KeptImage) -> None:
        assert self.store is not None and self._fetcher is not None
        now = self._clock()
        if now >= image.give_up_at - _LAST_TRY_MARGIN:
            await self._failed(image, "the upstream's link expired before a copy succeeded", lost=True)
            return
        started = self._tracker.operation_started()
        try:
            async with asyncio.timeout(COPY_TIMEOUT_S), self._fetcher.open(image.upstream_url) as download:
                key = f"{image.tenant_id}/{image.task_id}/{image.index}.{_EXTENSIONS[download.content_type]}"
                counted = _Counted(download.chunks, self._pace)
                await self.store.put(key, counted, download.content_type)
        except FetchError as e:
            too_big = "-byte cap" in e.message
            await self._failed(image, f"upstream: {e.message}", lost=too_big)
            return
        except StoreError as e:
            if self._tracker.failed(e, source="the result copier"):
                log.debug("copy of %s/%d failed on the store: %s", image.task_id, image.index, e)
            await self._failed(image, f"store: {e}", store=True)
            return
        except TimeoutError:
            await self._failed(image, f"no copy within {COPY_TIMEOUT_S:g} s")
            return
        if started is not None:
            self._tracker.operation_succeeded(started)
        else:
            self._tracker.recovered()
        await self._settle(
            image,
            {
                "state": KeptState.KEPT,
                "store_key": key,
                "size": counted.size,
                "content_type": download.content_type,
                "kept_at": self._clock(),
                "next_try_at": None,
                "attempts": image.attempts + 1,
                "last_error": None,
                "updated_at": self._clock(),
            },
        )
        metrics.result_copy("kept", counted.size)

    async def _failed(self, image: KeptImage, why: str, *, lost: bool = False, store: bool = False) -> None:
        now = self._clock()
        attempts = image.attempts + 1
        last_try = image.give_up_at - _LAST_TRY_MARGIN
        retry_at = now + (dt.timedelta(seconds=_STORE_RETRY_S) if store else _backoff(attempts))
        if not lost and now >= last_try:
            lost = True
        values: dict[str, Any] = {"attempts": attempts, "last_error": why[:500], "updated_at": now}
        if lost:
            values.update(state=KeptState.LOST, next_try_at=None, keep_until=None)
            log.warning("result image %d of task %s is lost: %s", image.index, image.task_id, why)
        else:
            values["next_try_at"] = min(retry_at, last_try)
            log.info("copy of image %d of task %s failed (attempt %d): %s", image.index, image.task_id, attempts, why)
        await self._settle(image, values)
        metrics.result_copy("lost" if lost else "retry")

    async def _settle(self, image: KeptImage, values: dict[str, Any]) -> None:
        async with self._sessions.begin() as session:
            written, settled = await repo.settle(session, image, self._owner, values)
            if settled and self._webhooks is not None:
                task = await session.get(Task, image.task_id)
                if task is not None:
                    shown = await self._shown(task, await repo.of_task(session, task.id), self._clock())
                    urls = shown.urls if shown is not None else list(task.result_urls or [])
                    await self._webhooks.release_task_events(session, task.id, urls)
        if not written:
            log.info(
                "copy of image %d of task %s changed during the attempt; outcome not recorded",
                image.index,
                image.task_id,
            )

    # --- retention ------------------------------------------------------------------------------------------------
    async def sweep_due(self) -> int:
        """Delete the images whose retention ended; the number deleted."""
        assert self.store is not None
        deleted = 0
        while True:
            now = self._clock()
            async with self._sessions.begin() as session:
                claimed = await repo.claim_expired(session, now, now + self._lease, self._owner, _SWEEP_BATCH)
            if not claimed:
                return deleted
            for image in claimed:
                try:
                    if image.store_key is not None:
                        await self.store.delete(image.store_key)
                except Exception as e:  # the store away: the lease runs out, and the next round tries again
                    self._tracker.failed(str(e), source="the result sweeper")
                    async with self._sessions.begin() as session:
                        await repo.release(session, image, self._owner)
                    return deleted
                async with self._sessions.begin() as session:
                    if await repo.mark_deleted(session, image, self._owner, self._clock()):
                        deleted += 1
                        if image.state == KeptState.KEPT:
                            metrics.result_deleted()
            if len(claimed) < _SWEEP_BATCH:
                return deleted

    # --- health ---------------------------------------------------------------------------------------------------
    async def probe(self, timeout_s: float = 3.0) -> bool:
        """Whether the store answers now; an outage's start and end are logged once each (its tracker)."""
        if self.store is None:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self.store.probe()
        except (StoreError, TimeoutError) as e:
            self._tracker.failed(e if isinstance(e, StoreError) else "no answer within 3 s", source="a store probe")
            return False
        self._tracker.recovered()
        return True

    async def health(self) -> str | None:
        """For /readyz: None when results are not kept, "ok", or "degraded: <why>" (tasks go on without copies)."""
        if self.store is None:
            return None
        if await self.probe():
            return "ok"
        return f"degraded: {self._tracker.latest_reason or 'unreachable'} (copies wait)"

    # --- ops ------------------------------------------------------------------------------------------------------
    async def usage(self, tenant_id: str) -> StorageUsage:
        async with self._sessions() as session:
            await reads_only(session)
            tenant = await find_tenant(session, tenant_id)
            images, size, pending = await repo.usage(session, tenant.id)
        return StorageUsage(images, size, pending, self._retention_of(tenant.result_retention_days))

    def _retention_of(self, days: int | None) -> int:
        if self.store is None:
            return 0
        return self.default_days if days is None else days

    async def delete_tenant_images(self, tenant_ref: str, *, actor: str) -> tuple[str, int]:
        """End the retention of every image of a tenant now: links to them stop at once, the sweeper deletes them
        from the store. The tenant's id and the number of images (kept or still being copied)."""
        async with self._audit.action(actor, "results.delete", "tenant", tenant_ref) as audited:
            tenant = await find_tenant(audited.session, tenant_ref)
            count = await repo.end_retention(audited.session, tenant.id, audited.now)
            audited.done(tenant.id, {"images": count})
        self._work.set()
        return tenant.id, count

    async def set_retention(self, tenant_ref: str, days: int | None, *, actor: str) -> StorageUsage:
        """A tenant's retention in days (None: the gateway's default; 0: keep nothing), applied to the images it
        already has (their retention counts from their task's completion)."""
        async with self._audit.action(actor, "results.retention", "tenant", tenant_ref) as audited:
            tenant = await find_tenant(audited.session, tenant_ref)
            before = tenant.result_retention_days
            await repo.set_retention(audited.session, tenant.id, days, self.default_days)
            audited.done(tenant.id, {"from": before, "to": days})
        self._work.set()
        return await self.usage(tenant.id)

    async def bytes_by_tenant(self) -> dict[str, int]:
        async with self._sessions() as session:
            await reads_only(session)
            return await repo.bytes_by_tenant(session)


def _is_kept(row: KeptImage, now: dt.datetime) -> bool:
    return (
        row.state == KeptState.KEPT
        and row.store_key is not None
        and row.keep_until is not None
        and row.keep_until > now
    )


def _image_not_found() -> GatewayError:
    return NotFound("Image not found (not kept, or no longer)", code="image_not_found")


def link_refused(why: str) -> GatewayError:
    """A link whose signature does not open the image, and no key: 401, as any tenant route without a credential."""
    return Unauthorized(why)


class _Pace:
    """At most `bytes_per_s` through every copy of this process together (0: no cap): a copy's chunk waits its turn.

    Copies have until the upstream's expiry, a day; the status and submit calls share the CPU with them now."""

    def __init__(self, bytes_per_s: float) -> None:
        self._rate = bytes_per_s
        self._next = 0.0

    async def take(self, size: int) -> None:
        if self._rate <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next)
        self._next = start + size / self._rate
        if start > now:
            await asyncio.sleep(start - now)


class _Counted:
    """The chunks of a download, counted as they go by, at the process's pace."""

    def __init__(self, chunks: AsyncIterator[bytes], pace: _Pace) -> None:
        self._chunks = chunks
        self._pace = pace
        self.size = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            await self._pace.take(len(chunk))
            self.size += len(chunk)
            yield chunk
