"""Tenant rules: creation with a first key, authentication by key, limits. Owns its transactions."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import Clock
from app.core.errors import Conflict, NotFound, Unauthorized
from app.core.ids import new_id
from app.core.limits import LIMIT_NAMES, LimitsUpdate
from app.core.security import KeyMaterial, bearer_token, new_tenant_key
from app.models import Tenant, TenantKey
from app.tenants import repository as repo
from app.tenants.schemas import Limits

DEMO_TENANT = "demo"


class TenantService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keys: KeyMaterial,
        clock: Clock,
        default_limits: Mapping[str, int | None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._keys = keys
        self._clock = clock
        self._default_limits = dict(default_limits or {})

    async def create(
        self, name: str, *, key: str | None = None, limits: Mapping[str, int | None] | None = None
    ) -> tuple[Tenant, str]:
        """Create a tenant (with the default limits unless given) and its first key, returned once in plaintext."""
        async with self._sessions.begin() as session:
            return await self._create(session, name, key=key, limits=limits)

    async def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of a `Bearer <key>` header, or Unauthorized in the upstream's shape."""
        token = bearer_token(authorization)
        if token is None:
            raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
        async with self._sessions() as session:
            tenant = await repo.find_active_by_key_hash(session, self._keys.hash_tenant_key(token), self._clock())
        if tenant is None:
            raise Unauthorized("Invalid API key")
        return tenant

    async def get(self, tenant_ref: str) -> Tenant:
        """A tenant by id or by name, or 404."""
        async with self._sessions() as session:
            return await find(session, tenant_ref)

    async def limits(self, tenant_ref: str) -> Limits:
        return Limits.of(await self.get(tenant_ref))

    async def set_limits(self, tenant_ref: str, update: LimitsUpdate) -> Limits:
        """Apply the limits given (None = unlimited); the others stay as they are."""
        async with self._sessions.begin() as session:
            tenant = await find(session, tenant_ref)
            for name, value in update.changes().items():
                setattr(tenant, name, value)
            tenant.updated_at = self._clock()
            await session.flush()
        return Limits.of(tenant)

    async def ensure_demo_key(self, stored: str | None) -> str:
        """The zero-config demo tenant's key: `stored` while it still works, else a new demo tenant's key."""
        if stored is not None:
            try:
                await self.authenticate(f"Bearer {stored}")
                return stored
            except Unauthorized:
                pass  # the database was reset under the key file: make a new demo tenant
        async with self._sessions.begin() as session:
            name = DEMO_TENANT
            if await repo.get_by_name(session, name) is not None:
                name = f"{DEMO_TENANT}-{secrets.token_hex(3)}"
            _, key = await self._create(session, name, key=new_tenant_key(), limits=None)
        return key

    async def _create(
        self, session: AsyncSession, name: str, *, key: str | None, limits: Mapping[str, int | None] | None
    ) -> tuple[Tenant, str]:
        name = name.strip()
        if not name:
            raise Conflict("Tenant name must not be empty", param="name")
        if await repo.get_by_name(session, name) is not None:
            raise Conflict(f"A tenant named '{name}' already exists", param="name")
        chosen = self._default_limits if limits is None else {n: limits.get(n) for n in LIMIT_NAMES}
        now = self._clock()
        tenant = Tenant(id=new_id("ten_"), name=name, status="active", created_at=now, updated_at=now, **chosen)
        await repo.insert_tenant(session, tenant)
        plaintext = key or new_tenant_key()
        await repo.insert_key(
            session,
            TenantKey(
                id=new_id("key_"),
                tenant_id=tenant.id,
                key_hash=self._keys.hash_tenant_key(plaintext),
                prefix=plaintext[:10],
                created_at=now,
            ),
        )
        return tenant, plaintext


async def find(session: AsyncSession, tenant_ref: str) -> Tenant:
    """A tenant by id or by name inside the caller's transaction, or 404 (for services of other features)."""
    # A NUL cannot be in any id or name, and PostgreSQL refuses it in a text parameter: an unknown tenant.
    valid = "\x00" not in tenant_ref
    tenant = valid and (await repo.get(session, tenant_ref) or await repo.get_by_name(session, tenant_ref))
    if not tenant:
        raise NotFound(f"Tenant {tenant_ref!r} not found", code="tenant_not_found")
    return tenant
