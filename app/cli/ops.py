"""Where an ops command runs: on this machine's services, or over a running gateway's admin API.

Every ops command has one code path: it asks an `Ops` for what it needs and prints the answer. `LocalOps` calls the
services on a one-connection kernel (the database settings and the secret key of this machine, audited as "cli");
`RemoteOps` sends the same request to the admin API of the gateway named by `--url` (or a profile) with the admin
token (audited as the API's caller), and reads the answer into the same pydantic model. So the output is the same
either way, and so is a refusal: the API's error message is the service's.

The target is chosen once, by the root command's options (`seedream-gateway --url URL tenants list`):
`--url` or `--profile` (or SEEDREAM_GATEWAY_URL / SEEDREAM_GATEWAY_PROFILE) select the remote mode; the token
is `--admin-token`, GATEWAY_ADMIN_TOKEN, or the profile's. A profile file holds secrets: it is refused unless only
its owner can read it (0600).
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from app.audit.schemas import AuditList
from app.audit.service import ACTOR_CLI, AuditService
from app.cli import common
from app.cli.common import fail, settings_with
from app.core.errors import GatewayError
from app.core.limits import LimitsUpdate
from app.core.runtime import Kernel
from app.models.tenant import TenantStatus
from app.quotas.schemas import DriftReport, UsageOut
from app.quotas.service import QuotaService
from app.results.feature import result_service
from app.results.schemas import ImagesDeleted, StorageOut
from app.results.service import ResultService
from app.results.store import build_store
from app.tasks.ledger import LedgerPage, StatusFilter, TaskDetail, TaskLedger
from app.tenants.schemas import (
    KeyList,
    KeyOut,
    Limits,
    NewKeyOut,
    TenantCreated,
    TenantList,
    TenantOut,
    TokensRevoked,
)
from app.tenants.service import TenantService
from app.upstream.schemas import RekeyReport, UpstreamKeyCreate, UpstreamKeyList, UpstreamKeyOut, UpstreamKeyUpdate
from app.upstream.service import UpstreamKeyService
from app.webhooks.feature import webhook_service
from app.webhooks.schemas import DeliveryList, DeliveryOut, WebhookOut, WebhookUpdate

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

URL_ENV = "SEEDREAM_GATEWAY_URL"
PROFILE_ENV = "SEEDREAM_GATEWAY_PROFILE"
PROFILES_ENV = "SEEDREAM_GATEWAY_PROFILES"  # the profiles file, if not the default one
TIMEOUT_S = 30.0


def profiles_path() -> Path:
    """`$SEEDREAM_GATEWAY_PROFILES`, or `~/.config/seedream-gateway/profiles.toml` (XDG_CONFIG_HOME honoured)."""
    if os.environ.get(PROFILES_ENV):
        return Path(os.environ[PROFILES_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "seedream-gateway" / "profiles.toml"


class Ops(Protocol):
    """Every ops action a command can ask for, answered with the admin API's own models."""

    # tenants
    async def create_tenant(self, name: str) -> TenantCreated: ...
    async def list_tenants(self, limit: int, cursor: str | None, name_contains: str | None = None) -> TenantList: ...
    async def tenant(self, ref: str) -> TenantOut: ...
    async def update_tenant(self, ref: str, *, name: str | None = None, status: str | None = None) -> TenantOut: ...
    async def delete_tenant(self, ref: str) -> TenantOut: ...
    async def limits(self, ref: str) -> Limits: ...
    async def set_limits(self, ref: str, update: LimitsUpdate) -> Limits: ...
    async def usage(self, ref: str) -> UsageOut: ...
    async def drift(self, ref: str | None) -> DriftReport: ...
    # tenant keys
    async def list_keys(self, ref: str, limit: int, cursor: str | None) -> KeyList: ...
    async def create_key(self, ref: str, *, name: str, scopes: list[str], expires_in_s: int | None) -> NewKeyOut: ...
    async def rotate_key(self, key_id: str, grace_s: int) -> NewKeyOut: ...
    async def revoke_key(self, key_id: str) -> KeyOut: ...
    # end-user tokens
    async def revoke_tokens(self, ref: str) -> TokensRevoked: ...

    async def images(self, ref: str) -> StorageOut: ...
    async def set_image_retention(self, ref: str, days: int | None) -> StorageOut: ...
    async def delete_images(self, ref: str) -> ImagesDeleted: ...
    # upstream keys
    async def list_upstream_keys(self, limit: int, cursor: str | None) -> UpstreamKeyList: ...
    async def add_upstream_key(self, body: UpstreamKeyCreate) -> UpstreamKeyOut: ...
    async def update_upstream_key(self, key_id: str, body: UpstreamKeyUpdate) -> UpstreamKeyOut: ...
    async def drain_upstream_key(self, key_id: str) -> UpstreamKeyOut: ...
    async def retire_upstream_key(self, key_id: str) -> UpstreamKeyOut: ...
    async def rekey(self) -> RekeyReport: ...
    # webhooks
    async def webhook(self, ref: str) -> WebhookOut: ...
    async def configure_webhook(self, ref: str, update: WebhookUpdate) -> WebhookOut: ...
    async def remove_webhook(self, ref: str) -> WebhookOut: ...
    async def test_webhook(self, ref: str) -> DeliveryOut: ...
    async def deliveries(
        self, limit: int, cursor: str | None, *, tenant: str | None, status: str | None, task_id: str | None
    ) -> DeliveryList: ...
    async def delivery(self, delivery_id: str) -> DeliveryOut: ...
    async def replay(self, delivery_id: str) -> DeliveryOut: ...
    # the ledger and the audit log
    async def tasks(
        self,
        limit: int,
        cursor: str | None,
        *,
        tenant: str | None,
        status: StatusFilter | None,
        outcome_unknown: bool | None,
    ) -> LedgerPage: ...
    async def task(self, task_id: str) -> TaskDetail: ...
    async def audit(
        self,
        limit: int,
        cursor: str | None,
        *,
        target_id: str | None,
        action: str | None,
        actor: str | None,
        outcome: str | None,
    ) -> AuditList: ...


class LocalOps:
    """The services on this machine's database (what the admin API's routes call), audited as "cli"."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._tenants = TenantService(kernel.sessions, kernel.keys, kernel.clock, kernel.settings.default_limits)
        self._quotas = QuotaService(kernel.sessions, kernel.clock)
        self._upstream = UpstreamKeyService(kernel.sessions, kernel.keys, kernel.clock)
        self._webhooks = webhook_service(kernel)
        self._ledger = TaskLedger(kernel.sessions)
        self._audit = AuditService(kernel.sessions, kernel.clock)

    async def create_tenant(self, name: str) -> TenantCreated:
        return await self._tenants.create_tenant(name, actor=ACTOR_CLI)

    async def list_tenants(self, limit: int, cursor: str | None, name_contains: str | None = None) -> TenantList:
        return await self._tenants.list_tenants(limit=limit, cursor=cursor, name_contains=name_contains)

    async def tenant(self, ref: str) -> TenantOut:
        return await self._tenants.describe(ref)

    async def update_tenant(self, ref: str, *, name: str | None = None, status: str | None = None) -> TenantOut:
        chosen = None if status is None else TenantStatus(status)
        return await self._tenants.update_tenant(ref, name=name, status=chosen, actor=ACTOR_CLI)

    async def delete_tenant(self, ref: str) -> TenantOut:
        return await self._tenants.delete(ref, actor=ACTOR_CLI)

    async def limits(self, ref: str) -> Limits:
        return await self._tenants.limits(ref)

    async def set_limits(self, ref: str, update: LimitsUpdate) -> Limits:
        return await self._tenants.set_limits(ref, update, actor=ACTOR_CLI)

    async def usage(self, ref: str) -> UsageOut:
        return UsageOut.of(await self._quotas.usage_of(ref))

    async def drift(self, ref: str | None) -> DriftReport:
        return DriftReport.of(await self._quotas.drift(ref))

    async def list_keys(self, ref: str, limit: int, cursor: str | None) -> KeyList:
        return await self._tenants.list_keys(ref, limit=limit, cursor=cursor)

    async def create_key(self, ref: str, *, name: str, scopes: list[str], expires_in_s: int | None) -> NewKeyOut:
        return await self._tenants.create_key(ref, name=name, scopes=scopes, expires_in_s=expires_in_s, actor=ACTOR_CLI)

    async def rotate_key(self, key_id: str, grace_s: int) -> NewKeyOut:
        return await self._tenants.rotate_key(key_id, grace_s, actor=ACTOR_CLI)

    async def revoke_key(self, key_id: str) -> KeyOut:
        return await self._tenants.revoke_key(key_id, actor=ACTOR_CLI)

    async def revoke_tokens(self, ref: str) -> TokensRevoked:
        return await self._tenants.revoke_tokens(ref, actor=ACTOR_CLI)

    def _results(self) -> ResultService:
        return result_service(self._kernel, store=build_store(self._kernel.settings))

    async def images(self, ref: str) -> StorageOut:
        return StorageOut.of(await self._results().usage(ref))

    async def set_image_retention(self, ref: str, days: int | None) -> StorageOut:
        return StorageOut.of(await self._results().set_retention(ref, days, actor=ACTOR_CLI))

    async def delete_images(self, ref: str) -> ImagesDeleted:
        found, count = await self._results().delete_tenant_images(ref, actor=ACTOR_CLI)
        return ImagesDeleted(tenant_id=found, images=count)

    async def list_upstream_keys(self, limit: int, cursor: str | None) -> UpstreamKeyList:
        return await self._upstream.list(limit=limit, cursor=cursor)

    async def add_upstream_key(self, body: UpstreamKeyCreate) -> UpstreamKeyOut:
        return await self._upstream.create(body, actor=ACTOR_CLI)

    async def update_upstream_key(self, key_id: str, body: UpstreamKeyUpdate) -> UpstreamKeyOut:
        return await self._upstream.update(key_id, body, actor=ACTOR_CLI)

    async def drain_upstream_key(self, key_id: str) -> UpstreamKeyOut:
        return await self._upstream.drain(key_id, actor=ACTOR_CLI)

    async def retire_upstream_key(self, key_id: str) -> UpstreamKeyOut:
        return await self._upstream.retire(key_id, actor=ACTOR_CLI)

    async def rekey(self) -> RekeyReport:
        return await self._upstream.rekey(actor=ACTOR_CLI)

    async def webhook(self, ref: str) -> WebhookOut:
        return await self._webhooks.describe(ref)

    async def configure_webhook(self, ref: str, update: WebhookUpdate) -> WebhookOut:
        return await self._webhooks.configure(ref, update, actor=ACTOR_CLI)

    async def remove_webhook(self, ref: str) -> WebhookOut:
        return await self._webhooks.remove(ref, actor=ACTOR_CLI)

    async def test_webhook(self, ref: str) -> DeliveryOut:
        return await self._webhooks.send_test(ref, actor=ACTOR_CLI)

    async def deliveries(
        self, limit: int, cursor: str | None, *, tenant: str | None, status: str | None, task_id: str | None
    ) -> DeliveryList:
        return await self._webhooks.list_deliveries(
            limit=limit, cursor=cursor, tenant=tenant, status=status, task_id=task_id
        )

    async def delivery(self, delivery_id: str) -> DeliveryOut:
        return await self._webhooks.get_delivery(delivery_id)

    async def replay(self, delivery_id: str) -> DeliveryOut:
        return await self._webhooks.replay(delivery_id, actor=ACTOR_CLI)

    async def tasks(
        self,
        limit: int,
        cursor: str | None,
        *,
        tenant: str | None,
        status: StatusFilter | None,
        outcome_unknown: bool | None,
    ) -> LedgerPage:
        return await self._ledger.list(
            tenant_id=tenant, status=status, outcome_unknown=outcome_unknown, limit=limit, cursor=cursor
        )

    async def task(self, task_id: str) -> TaskDetail:
        return await self._ledger.get(task_id)

    async def audit(
        self,
        limit: int,
        cursor: str | None,
        *,
        target_id: str | None,
        action: str | None,
        actor: str | None,
        outcome: str | None,
    ) -> AuditList:
        return await self._audit.list(
            limit=limit, cursor=cursor, target_id=target_id, action=action, actor=actor, outcome=outcome
        )


class RemoteOps:
    """The admin API of a running gateway, over HTTP with the admin token; its answers read into the same models."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def _call(
        self, model: type[M], method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None
    ) -> M:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = await self._client.request(method, "/admin/v1" + path, json=body, params=query)
        except httpx.HTTPError as e:
            raise GatewayError(f"cannot reach the gateway at {self._client.base_url}: {e!r}") from e
        if response.status_code >= 400:
            raise _refusal(response)
        try:
            return model.model_validate(response.json())
        except ValueError as e:
            raise GatewayError(
                f"{self._client.base_url} answered {method} {path} with something other than the admin API's "
                f"{model.__name__} (is --url a gateway's admin address?)"
            ) from e

    async def create_tenant(self, name: str) -> TenantCreated:
        return await self._call(TenantCreated, "POST", "/tenants", body={"name": name})

    async def list_tenants(self, limit: int, cursor: str | None, name_contains: str | None = None) -> TenantList:
        params = {"limit": limit, "cursor": cursor, "name_contains": name_contains}
        return await self._call(TenantList, "GET", "/tenants", params=params)

    async def tenant(self, ref: str) -> TenantOut:
        return await self._call(TenantOut, "GET", f"/tenants/{_seg(ref)}")

    async def update_tenant(self, ref: str, *, name: str | None = None, status: str | None = None) -> TenantOut:
        body = {k: v for k, v in {"name": name, "status": status}.items() if v is not None}
        return await self._call(TenantOut, "PATCH", f"/tenants/{_seg(ref)}", body=body)

    async def delete_tenant(self, ref: str) -> TenantOut:
        return await self._call(TenantOut, "DELETE", f"/tenants/{_seg(ref)}")

    async def limits(self, ref: str) -> Limits:
        return await self._call(Limits, "GET", f"/tenants/{_seg(ref)}/limits")

    async def set_limits(self, ref: str, update: LimitsUpdate) -> Limits:
        body = update.model_dump(mode="json", exclude_unset=True)
        return await self._call(Limits, "PUT", f"/tenants/{_seg(ref)}/limits", body=body)

    async def usage(self, ref: str) -> UsageOut:
        return await self._call(UsageOut, "GET", f"/tenants/{_seg(ref)}/usage")

    async def drift(self, ref: str | None) -> DriftReport:
        return await self._call(DriftReport, "GET", "/quota/drift", params={"tenant_id": ref})

    async def list_keys(self, ref: str, limit: int, cursor: str | None) -> KeyList:
        params = {"limit": limit, "cursor": cursor}
        return await self._call(KeyList, "GET", f"/tenants/{_seg(ref)}/keys", params=params)

    async def create_key(self, ref: str, *, name: str, scopes: list[str], expires_in_s: int | None) -> NewKeyOut:
        body: dict[str, Any] = {"name": name, "scopes": scopes}
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        return await self._call(NewKeyOut, "POST", f"/tenants/{_seg(ref)}/keys", body=body)

    async def rotate_key(self, key_id: str, grace_s: int) -> NewKeyOut:
        return await self._call(NewKeyOut, "POST", f"/keys/{_seg(key_id)}/rotate", body={"grace_seconds": grace_s})

    async def revoke_key(self, key_id: str) -> KeyOut:
        return await self._call(KeyOut, "DELETE", f"/keys/{_seg(key_id)}")

    async def revoke_tokens(self, ref: str) -> TokensRevoked:
        return await self._call(TokensRevoked, "POST", f"/tenants/{_seg(ref)}/tokens/revoke")

    async def images(self, ref: str) -> StorageOut:
        return await self._call(StorageOut, "GET", f"/tenants/{_seg(ref)}/images")

    async def set_image_retention(self, ref: str, days: int | None) -> StorageOut:
        body = {"retention_days": days}
        return await self._call(StorageOut, "PUT", f"/tenants/{_seg(ref)}/images/retention", body=body)

    async def delete_images(self, ref: str) -> ImagesDeleted:
        return await self._call(ImagesDeleted, "DELETE", f"/tenants/{_seg(ref)}/images")

    async def list_upstream_keys(self, limit: int, cursor: str | None) -> UpstreamKeyList:
        return await self._call(UpstreamKeyList, "GET", "/upstream-keys", params={"limit": limit, "cursor": cursor})

    async def add_upstream_key(self, body: UpstreamKeyCreate) -> UpstreamKeyOut:
        return await self._call(UpstreamKeyOut, "POST", "/upstream-keys", body=body.model_dump(mode="json"))

    async def update_upstream_key(self, key_id: str, body: UpstreamKeyUpdate) -> UpstreamKeyOut:
        payload = body.model_dump(mode="json", exclude_unset=True)
        return await self._call(UpstreamKeyOut, "PATCH", f"/upstream-keys/{_seg(key_id)}", body=payload)

    async def drain_upstream_key(self, key_id: str) -> UpstreamKeyOut:
        return await self._call(UpstreamKeyOut, "POST", f"/upstream-keys/{_seg(key_id)}/drain")

    async def retire_upstream_key(self, key_id: str) -> UpstreamKeyOut:
        return await self._call(UpstreamKeyOut, "DELETE", f"/upstream-keys/{_seg(key_id)}")

    async def rekey(self) -> RekeyReport:
        return await self._call(RekeyReport, "POST", "/secrets/rekey")

    async def webhook(self, ref: str) -> WebhookOut:
        return await self._call(WebhookOut, "GET", f"/tenants/{_seg(ref)}/webhook")

    async def configure_webhook(self, ref: str, update: WebhookUpdate) -> WebhookOut:
        body = update.model_dump(mode="json", exclude_unset=True)
        return await self._call(WebhookOut, "PUT", f"/tenants/{_seg(ref)}/webhook", body=body)

    async def remove_webhook(self, ref: str) -> WebhookOut:
        return await self._call(WebhookOut, "DELETE", f"/tenants/{_seg(ref)}/webhook")

    async def test_webhook(self, ref: str) -> DeliveryOut:
        return await self._call(DeliveryOut, "POST", f"/tenants/{_seg(ref)}/webhook/test")

    async def deliveries(
        self, limit: int, cursor: str | None, *, tenant: str | None, status: str | None, task_id: str | None
    ) -> DeliveryList:
        params = {"limit": limit, "cursor": cursor, "tenant_id": tenant, "status": status, "task_id": task_id}
        return await self._call(DeliveryList, "GET", "/webhook-deliveries", params=params)

    async def delivery(self, delivery_id: str) -> DeliveryOut:
        return await self._call(DeliveryOut, "GET", f"/webhook-deliveries/{_seg(delivery_id)}")

    async def replay(self, delivery_id: str) -> DeliveryOut:
        return await self._call(DeliveryOut, "POST", f"/webhook-deliveries/{_seg(delivery_id)}/replay")

    async def tasks(
        self,
        limit: int,
        cursor: str | None,
        *,
        tenant: str | None,
        status: StatusFilter | None,
        outcome_unknown: bool | None,
    ) -> LedgerPage:
        params = {
            "limit": limit,
            "cursor": cursor,
            "tenant_id": tenant,
            "status": status,
            "outcome_unknown": None if outcome_unknown is None else str(outcome_unknown).lower(),
        }
        return await self._call(LedgerPage, "GET", "/tasks", params=params)

    async def task(self, task_id: str) -> TaskDetail:
        return await self._call(TaskDetail, "GET", f"/tasks/{_seg(task_id)}")

    async def audit(
        self,
        limit: int,
        cursor: str | None,
        *,
        target_id: str | None,
        action: str | None,
        actor: str | None,
        outcome: str | None,
    ) -> AuditList:
        params = {
            "limit": limit,
            "cursor": cursor,
            "target_id": target_id,
            "action": action,
            "actor": actor,
            "outcome": outcome,
        }
        return await self._call(AuditList, "GET", "/audit", params=params)


def _seg(value: str) -> str:
    """A path segment: a tenant's name may hold any character but a control one."""
    return quote(value, safe="")


def _refusal(response: httpx.Response) -> GatewayError:
    """The API's refusal as the service raised it (same message, same status), or a line saying what came back."""
    try:
        error = response.json()["error"]
        return GatewayError(str(error["message"]), status_code=response.status_code, code=error.get("code"))
    except (ValueError, KeyError, TypeError):
        return GatewayError(f"the gateway answered {response.status_code} {response.reason_phrase}")


# --- choosing the target --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Remote:
    """A running gateway's admin API, and the admin token to call it with."""

    url: str
    token: str


def remote_from_options(url: str | None, token: str | None, profile: str | None) -> Remote | None:
    """The remote target the root options name, or None for the local mode (no --url, no profile)."""
    url = url or os.environ.get(URL_ENV) or None
    profile = profile or os.environ.get(PROFILE_ENV) or None
    if url is None and profile is None:
        return None
    stored = _profile(profile) if profile is not None else {}
    url = url or stored.get("url")
    token = token or os.environ.get("GATEWAY_ADMIN_TOKEN") or stored.get("admin_token")
    if not url:
        fail(f"profile {profile!r} has no url")
    if not token:
        fail("an admin token is needed with --url: --admin-token, GATEWAY_ADMIN_TOKEN, or a profile's admin_token")
    if not url.startswith(("http://", "https://")):
        fail(f"--url must be the gateway's http(s) address, not {url!r}")
    return Remote(url.rstrip("/"), token)


def _profile(name: str) -> dict[str, str]:
    """One profile of the profiles file (TOML, a table per profile: url, admin_token), owner-only or refused."""
    path = profiles_path()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        fail(f"no profiles file at {path} (a [{name}] table with url and admin_token, mode 0600)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        fail(f"{path} holds admin tokens and others can read it (mode {oct(mode & 0o777)}): chmod 600 {path}")
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(f"cannot read {path}: {e}")
    table = profiles.get(name)
    if not isinstance(table, dict):
        fail(f"no profile [{name}] in {path}")
    return {k: str(v) for k, v in table.items() if k in ("url", "admin_token")}


def run_ops(call: Callable[[Ops], Awaitable[T]]) -> T:
    """Run one ops call, remotely when the command line named a gateway, else on this machine's services;
    a refusal is the service's message on one line, exit code 2, either way."""
    remote: Remote | None = common.remote()
    if remote is None:
        return common.run_with_kernel(settings_with(), lambda kernel: call(LocalOps(kernel)))

    async def main(remote: Remote) -> T:
        headers = {"Authorization": f"Bearer {remote.token}", "User-Agent": "seedream-gateway-cli/0.1"}
        timeout = httpx.Timeout(TIMEOUT_S, connect=10.0)
        async with httpx.AsyncClient(base_url=remote.url, headers=headers, timeout=timeout) as client:
            return await call(RemoteOps(client))

    try:
        return asyncio.run(main(remote))
    except GatewayError as e:
        fail(e.message)
    except KeyboardInterrupt:  # pragma: no cover - a person's ^C
        sys.exit(130)
