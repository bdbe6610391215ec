"""Webhook rules: a tenant's endpoint, signing secret and callback origins (ops, audited); an event per task end
enqueued in the transaction that ends the task; delivery at least once, with the upstream's retry schedule and a
delivery log; replay.

Owns its transactions. Every change made for an operator is one audited action (`AuditService.action`: the change
and its event in one transaction, a refusal audited on its own, no secret in either).
A change of a tenant's callback origins also writes the tenant's invalidation event, so every replica's cached
tenant (which the submit path checks a callback_url against) is dropped within the invalidation bound.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.service import AuditedAction, AuditService
from app.core import metrics
from app.core.background import Wakeup
from app.core.clock import Clock, to_unix
from app.core.db.engine import reads_only
from app.core.errors import Conflict, InvalidRequest, NotFound
from app.core.invalidation import Invalidator, record
from app.core.pagination import DEFAULT_PAGE
from app.core.security import KeyMaterial
from app.models import Tenant
from app.models.task import Task
from app.models.webhook import WebhookDelivery
from app.tenants.service import find
from app.webhooks import events, signing
from app.webhooks import repository as repo
from app.webhooks.repository import DEAD, DELIVERED, PENDING
from app.webhooks.schemas import (
    DELIVERY_CURSOR,
    ID_PATTERN,
    DeliveryList,
    DeliveryOut,
    WebhookOut,
    WebhookUpdate,
)
from app.webhooks.sender import Outcome, Sender
from app.webhooks.targets import (
    Resolver,
    TargetRefused,
    allowed_addresses,
    parse_origin,
    parse_target,
    system_resolver,
)

log = logging.getLogger(__name__)

# The upstream's schedule: retries after about 10 s, 30 s, 2 min, 10 min, 1 h, 6 h, 24 h; then the delivery is dead.
DEFAULT_RETRY_SCHEDULE_S: tuple[float, ...] = (10, 30, 120, 600, 3600, 6 * 3600, 24 * 3600)
LEASE = dt.timedelta(seconds=60)  # longer than an attempt can take (10 s timeout), so a lease never runs out mid-call
BATCH = 50
CONCURRENCY = 10
# A target refused by policy (not http(s), user info, does not resolve, an internal address): 409, as other refusals
# of well-formed ops requests that depend on the world rather than on the request's shape (`invalid_expiry`).
INVALID_TARGET = "invalid_webhook_target"
_ID = re.compile(ID_PATTERN)


class WebhookService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keys: KeyMaterial,
        clock: Clock,
        *,
        allow_private: bool = False,
        retry_schedule_s: Sequence[float] = DEFAULT_RETRY_SCHEDULE_S,
        resolver: Resolver = system_resolver,
        sender: Sender | None = None,
        invalidator: Invalidator | None = None,
        batch: int = BATCH,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self._sessions = sessions
        self._keys = keys
        self._clock = clock
        self._allow_private = allow_private
        self._schedule = [dt.timedelta(seconds=s) for s in retry_schedule_s]
        self._resolver = resolver
        self._sender = sender
        self._invalidator = invalidator
        self._batch = batch
        self._concurrency = concurrency
        self._audit = AuditService(sessions, clock)
        self._work = Wakeup("gw_webhooks_wake")  # its name marks, in session.info, the after-commit wake registered

    # --- waking the deliverer -------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Tell this process's deliverer that work was enqueued (it also looks every poll interval)."""
        self._work.set()

    async def wait_for_work(self, timeout_s: float) -> None:
        """Until `wake` (or at most `timeout_s`)."""
        await self._work.wait(timeout_s)

    def _wake_after_commit(self, session: AsyncSession) -> None:
        """Wake the deliverer once the caller's transaction has committed (before that it would find nothing)."""
        self._work.after_commit(session)

    # --- the task end hook (TaskService.on_end) -------------------------------------------------------------------
    async def task_ended(self, session: AsyncSession, task: Task, tenant_webhook_url: str | None) -> None:
        """Enqueue the task's final event, in the transaction that ends it: to the tenant's webhook URL (as the end's
        statement read it: repository.tenant_webhook_url_sql) and to the task's callback_url (once when both are the
        same URL)."""
        targets = list(dict.fromkeys(u for u in (tenant_webhook_url, task.callback_url) if u))
        if not targets:
            return
        now = self._clock()
        rows = []
        for url in targets:
            event_id = events.new_event_id()
            kind, body = events.task_event(event_id, task, now)
            rows.append(self._row(event_id, task.tenant_id, task.id, kind, url, body, now))
        await repo.insert(session, rows)
        self._wake_after_commit(session)

    async def hold_task_events(self, session: AsyncSession, task_id: str, until: dt.datetime) -> None:
        """In the transaction that ends a task whose images are being kept (app/results): its events wait until
        `until` at most, for `release_task_events` to give them the kept copies' links."""
        await repo.hold_task(session, task_id, until)

    async def release_task_events(self, session: AsyncSession, task_id: str, urls: list[str]) -> None:
        """A task's images are kept (or will not be): its events not sent yet carry these URLs, and go now."""
        now = self._clock()
        rows = await repo.unattempted_of_task(session, task_id, now)
        for row in rows:
            row.body = events.with_image_urls(row.body, urls)
            row.next_attempt_at = now
            row.updated_at = now
        if rows:
            await session.flush()
            self._wake_after_commit(session)

    @staticmethod
    def _row(
        event_id: str, tenant_id: str, task_id: str | None, kind: str, url: str, body: dict[str, Any], now: dt.datetime
    ) -> WebhookDelivery:
        return WebhookDelivery(
            id=event_id,
            tenant_id=tenant_id,
            task_id=task_id,
            event_type=kind,
            url=url,
            body=events.encode(body),
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )

    # --- configuration (ops) --------------------------------------------------------------------------------------
    async def describe(self, tenant_ref: str) -> WebhookOut:
        """The tenant's webhook configuration; 404 `webhook_not_found` when it has none (never set, or deleted)."""
        async with self._sessions() as session:
            tenant = await find(session, tenant_ref)
        if tenant.webhook_url is None and tenant.webhook_secret is None and not tenant.callback_origins:
            raise NotFound(f"Tenant {tenant_ref!r} has no webhook configuration.", code="webhook_not_found")
        return WebhookOut.of(tenant, now_unix=self._now_unix())

    async def configure(self, tenant_ref: str, update: WebhookUpdate, *, actor: str) -> WebhookOut:
        """Set the endpoint and/or the callback origins (each checked: http(s), and every address the host resolves
        to public unless allowed); make the signing secret on the first call, or a new one on `rotate_secret` (the
        previous one signing too for `grace_seconds`). A new secret is in the answer, this once."""
        given = update.given()
        async with self._action(actor, "webhook.update", tenant_ref) as audited:
            session, now = audited.session, audited.now
            url = None if update.url is None else await self._checked_url(update.url, "url")
            origins: list[str] | None = None
            if "callback_origins" in given:
                origins = []
                for value in update.callback_origins or []:
                    origin = await self._checked_origin(value)
                    if origin not in origins:
                        origins.append(origin)
            tenant = await find(session, tenant_ref)
            changes: dict[str, Any] = {}
            if "url" in given and url != tenant.webhook_url:
                changes["url"] = {"from": _shown(tenant.webhook_url), "to": _shown(url)}
                tenant.webhook_url = url
            if origins is not None and origins != list(tenant.callback_origins or []):
                changes["callback_origins"] = {"from": list(tenant.callback_origins or []), "to": origins}
                tenant.callback_origins = origins or None
            secret = None
            if tenant.webhook_secret is None or update.rotate_secret:
                secret = signing.new_secret()
                if tenant.webhook_secret is not None:
                    tenant.webhook_previous_secret = tenant.webhook_secret
                    tenant.webhook_previous_until = now + dt.timedelta(seconds=update.grace_seconds)
                    changes["secret"] = {
                        "rotated": True,
                        "previous_signs_until": to_unix(tenant.webhook_previous_until),
                    }
                else:
                    changes["secret"] = {"created": True}
                tenant.webhook_secret = self._keys.encrypt(secret)
            if changes:
                tenant.updated_at = now
                await session.flush()
                if "callback_origins" in changes:
                    await record(session, "tenant", tenant.id, now=now)
            audited.done(tenant.id, {"changes": changes})
        return WebhookOut.of(tenant, now_unix=to_unix(now) or 0, secret=secret)

    async def remove(self, tenant_ref: str, *, actor: str) -> WebhookOut:
        """Forget the tenant's endpoint, secrets and callback origins. Deliveries still pending then have nothing
        to sign with and end `dead`."""
        async with self._action(actor, "webhook.delete", tenant_ref) as audited:
            session, now = audited.session, audited.now
            tenant = await find(session, tenant_ref)
            had = tenant.webhook_url is not None or tenant.webhook_secret is not None or bool(tenant.callback_origins)
            if had:
                tenant.webhook_url = None
                tenant.webhook_secret = None
                tenant.webhook_previous_secret = None
                tenant.webhook_previous_until = None
                tenant.callback_origins = None
                tenant.updated_at = now
                await session.flush()
                await record(session, "tenant", tenant.id, now=now)
            audited.done(tenant.id, {"had_configuration": had})
        return WebhookOut.of(tenant, now_unix=to_unix(now) or 0)

    async def send_test(self, tenant_ref: str, *, actor: str) -> DeliveryOut:
        """Enqueue an `endpoint.test` event to the tenant's endpoint; 409 when it has none."""
        async with self._action(actor, "webhook.test", tenant_ref) as audited:
            session, now = audited.session, audited.now
            tenant = await find(session, tenant_ref)
            if tenant.webhook_url is None or tenant.webhook_secret is None:
                raise Conflict("The tenant has no webhook endpoint: PUT one first.", code="webhook_not_configured")
            event_id = events.new_event_id()
            row = self._row(
                event_id,
                tenant.id,
                None,
                events.TEST,
                tenant.webhook_url,
                events.test_event(event_id, tenant.id, now),
                now,
            )
            await repo.insert(session, [row])
            audited.done(tenant.id, {"delivery_id": event_id, "url": _shown(tenant.webhook_url)})
            self._wake_after_commit(session)
        return DeliveryOut.of(row)

    # --- the delivery log -----------------------------------------------------------------------------------------
    async def list_deliveries(
        self,
        *,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
        tenant: str | None = None,
        status: str | None = None,
        task_id: str | None = None,
    ) -> DeliveryList:
        """A page of deliveries, newest first, filtered by tenant (id or name), status and task when asked."""
        page = DELIVERY_CURSOR.request(limit, cursor)
        if status is not None and status not in (PENDING, DELIVERED, DEAD):
            raise InvalidRequest("status must be pending, delivered or dead.", param="status")
        async with self._sessions() as session:
            tenant_id = None if tenant is None else (await find(session, tenant)).id
            rows = await repo.page(
                session,
                limit=page.fetch,
                before_id=page.after,
                tenant_id=tenant_id,
                status=status,
                task_id=None if task_id is None or not _ID.fullmatch(task_id) else task_id,
            )
            if task_id is not None and not _ID.fullmatch(task_id):
                rows = []
        return DeliveryList.of(rows, page, DeliveryOut.of)

    async def get_delivery(self, delivery_id: str) -> DeliveryOut:
        async with self._sessions() as session:
            row = await self._find_delivery(session, delivery_id)
        return DeliveryOut.of(row)

    async def replay(self, delivery_id: str, *, actor: str) -> DeliveryOut:
        """Send a delivery again (same event id, same body, a fresh signature): back to pending, due now, with its
        attempts counted from zero."""
        async with self._action(actor, "webhook.replay", delivery_id, target_type="webhook_delivery") as audited:
            session, now = audited.session, audited.now
            row = await self._find_delivery(session, delivery_id, for_update=True)
            before = {"status": row.status, "attempts": row.attempts}
            row.status = PENDING
            row.attempts = 0
            row.next_attempt_at = now
            row.lease_until = None
            row.delivered_at = None
            row.updated_at = now
            await session.flush()
            audited.done(row.id, {"tenant_id": row.tenant_id, "before": before})
            self._wake_after_commit(session)
        return DeliveryOut.of(row)

    # --- delivering -----------------------------------------------------------------------------------------------
    async def deliver_due(self) -> int:
        """Claim the deliveries due now (a lease keeps other replicas off them), post each once, record each
        outcome; the number claimed."""
        if self._sender is None:
            raise RuntimeError("this WebhookService cannot deliver (no sender)")
        now = self._clock()
        lease_until = now + LEASE
        async with self._sessions() as session:  # a read first: an idle tick is one autocommit read, no transaction
            await reads_only(session)
            if not await repo.any_due(session, now):
                return 0
        async with self._sessions.begin() as session:
            rows = await repo.claim_due(session, now, lease_until, self._batch)
        if not rows:
            return 0
        signing_secrets = await self._signing_secrets({r.tenant_id for r in rows}, now)
        gate = asyncio.Semaphore(self._concurrency)

        async def one(row: WebhookDelivery) -> None:
            async with gate:
                await self._attempt(row, signing_secrets.get(row.tenant_id, []), lease_until)

        await asyncio.gather(*(one(r) for r in rows))
        return len(rows)

    async def _attempt(self, row: WebhookDelivery, signing_secrets: list[str], lease_until: dt.datetime) -> None:
        assert self._sender is not None
        if not signing_secrets:
            outcome = Outcome(False, error="no signing secret: the tenant's webhook configuration was removed")
            final = True
        else:
            body = row.body.encode()
            timestamp = int(self._clock().timestamp())
            outcome = await self._sender.post(row.url, body, signing.headers(signing_secrets, row.id, timestamp, body))
            final = False
        now = self._clock()
        attempts = row.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
            "lease_until": None,
            "updated_at": now,
        }
        if outcome.delivered:
            values.update(status=DELIVERED, delivered_at=now, next_attempt_at=None)
        elif final or attempts > len(self._schedule):
            values.update(status=DEAD, next_attempt_at=None)
        else:
            values.update(next_attempt_at=now + self._schedule[attempts - 1])
        async with self._sessions.begin() as session:
            written = await repo.record_attempt(session, row.id, lease_until, values)
        if written:
            metrics.webhook_delivery(
                "delivered" if outcome.delivered else "dead" if values.get("status") == DEAD else "retry"
            )
        if not written:
            log.info("webhook delivery %s changed during its attempt (replayed?); outcome not recorded", row.id)
        elif values.get("status") == DEAD:
            log.warning(
                "webhook delivery %s to %s is dead after %d attempts: %s",
                row.id,
                _shown(row.url),
                attempts,
                outcome.error,
            )
        elif not outcome.delivered:
            log.info("webhook delivery %s attempt %d failed: %s", row.id, attempts, outcome.error)

    async def _signing_secrets(self, tenant_ids: set[str], now: dt.datetime) -> dict[str, list[str]]:
        """Per tenant: its current secret, and its previous one while that still signs (decrypted)."""
        async with self._sessions() as session:
            tenants = (await session.execute(select(Tenant).where(Tenant.id.in_(tenant_ids)))).scalars().all()
        out: dict[str, list[str]] = {}
        for tenant in tenants:
            found: list[str] = []
            try:
                if tenant.webhook_secret is not None:
                    found.append(self._keys.decrypt(tenant.webhook_secret))
                until = tenant.webhook_previous_until
                if tenant.webhook_previous_secret is not None and until is not None and until > now and found:
                    found.append(self._keys.decrypt(tenant.webhook_previous_secret))
            except ValueError:
                log.error("webhook secret of tenant %s cannot be decrypted (GATEWAY_SECRET_KEY changed?)", tenant.id)
            out[tenant.id] = found
        return out

    # --- helpers --------------------------------------------------------------------------------------------------
    def _now_unix(self) -> int:
        return to_unix(self._clock()) or 0

    async def _checked_url(self, value: str, param: str) -> str:
        try:
            target = parse_target(value)
            await allowed_addresses(target, self._resolver, allow_private=self._allow_private)
        except TargetRefused as e:
            raise Conflict(f"{param}: {e}", param=param, code=INVALID_TARGET) from None
        return value

    async def _checked_origin(self, value: str) -> str:
        try:
            origin = parse_origin(value)
            await allowed_addresses(parse_target(origin), self._resolver, allow_private=self._allow_private)
        except TargetRefused as e:
            raise Conflict(f"callback_origins: {e}", param="callback_origins", code=INVALID_TARGET) from None
        return origin

    async def _find_delivery(
        self, session: AsyncSession, delivery_id: str, *, for_update: bool = False
    ) -> WebhookDelivery:
        row = await repo.get(session, delivery_id, for_update=for_update) if _ID.fullmatch(delivery_id) else None
        if row is None:
            raise NotFound(f"Delivery {delivery_id!r} not found", code="delivery_not_found")
        return row

    @asynccontextmanager
    async def _action(
        self, actor: str, action: str, target_ref: str, *, target_type: str = "tenant"
    ) -> AsyncIterator[AuditedAction]:
        """One audited admin action (`AuditService.action`); once it has committed, this process's caches drop what
        it changed at once."""
        async with self._audit.action(actor, action, target_type, target_ref) as audited:
            yield audited
        if self._invalidator is not None:
            self._invalidator.apply_recorded(audited.session)


def _shown(url: str | None) -> str | None:
    """A URL as logs and the audit log show it: without its query, which may carry a token."""
    if url is None:
        return None
    try:
        return parse_target(url).redacted
    except TargetRefused:
        return "[unparsable]"
