"""Tenant rules: tenants and their keys (create, list, rotate, revoke, disable), authentication by key or by an
end-user token the keys mint (app/tenants/tokens.py), limits, browser origins.

Owns its transactions. Every change made for an operator is one audited action (`AuditService.action`: `actor` is
"admin-token" for the ops API, "cli" for the command line, "system" for the gateway itself) and writes its
invalidation event (app/core/invalidation.py) in the transaction of the change.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.service import AuditedAction, AuditService
from app.core.clock import Clock, from_unix, to_unix
from app.core.cors import normalize_origin
from app.core.db.engine import reads_only
from app.core.errors import Conflict, GatewayError, InvalidRequest, NotFound, Unauthorized
from app.core.ids import new_id
from app.core.invalidation import Invalidator, record
from app.core.limits import LIMIT_NAMES, LimitsUpdate, values_of
from app.core.pagination import DEFAULT_PAGE
from app.core.security import TOKEN_PREFIX, KeyMaterial, bearer_token, new_tenant_key
from app.models import Tenant, TenantKey, TenantStatus
from app.tenants import repository as repo
from app.tenants.auth_cache import AuthCache
from app.tenants.errors import Forbidden
from app.tenants.last_used import DEFAULT_INTERVAL_S, LastUsedRecorder
from app.tenants.schemas import (
    DEFAULT_GRACE_S,
    DEFAULT_SCOPES,
    KEY_CURSOR,
    MAX_EXPIRES_IN_S,
    MAX_GRACE_S,
    SCOPES,
    TENANT_CURSOR,
    TOKEN_SCOPES,
    KeyList,
    KeyOut,
    Limits,
    NewKeyOut,
    Scope,
    TenantCreated,
    TenantList,
    TenantOut,
    TokenCreate,
    TokenOut,
    TokensRevoked,
    key_name_problem,
    name_problem,
    parse_scopes,
)
from app.tenants.tokens import EndUser, TokenClaims, VerifiedTokens, issued_after, unix_ms

log = logging.getLogger(__name__)

DEMO_TENANT = "demo"
DEMO_KEY_FILE = "demo-tenant.json"  # under data_dir: the zero-config demo tenant's key (app/cli/server.py)
_TOKEN_WHOS = 10_000  # token identities kept
ACTOR_SYSTEM = "system"
_KEY_ID = re.compile(r"[A-Za-z0-9_]{1,40}")  # any other key id names no key: 404 without a query
_MAX_KEY_CHARS = 512  # far beyond any key the gateway makes: no hashing of megabyte headers


@dataclass(frozen=True)
class AuthenticatedKey:
    """Who a request is: the tenant, which of its keys (for an end-user token: the key that minted it), and what the
    caller may do; for a token, the end user it was minted for, with that end user's limits."""

    tenant: Tenant
    key_id: str
    scopes: frozenset[str]
    end_user: EndUser | None = None  # None: a tenant key
    expires_at: dt.datetime | None = None  # when the key (or the token) stops working; None: never

    @property
    def end_user_id(self) -> str | None:
        """The token's end user (whose tasks alone it reads); None for a tenant key (every task of the tenant)."""
        return None if self.end_user is None else self.end_user.id


class TenantService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keys: KeyMaterial,
        clock: Clock,
        default_limits: Mapping[str, int | None] | None = None,
        *,
        last_used_interval_s: float = DEFAULT_INTERVAL_S,
        invalidator: Invalidator | None = None,
    ) -> None:
        self._sessions = sessions
        self._keys = keys
        self._clock = clock
        self._default_limits = dict(default_limits or {})
        self._audit = AuditService(sessions, clock)
        self._last_used = LastUsedRecorder(sessions, last_used_interval_s)
        self._invalidator = invalidator
        self._known = AuthCache(invalidator)  # without an invalidator (the CLI) nothing is cached
        self._tokens = VerifiedTokens(keys)
        # Each verified token's identity, while its minting key's (the same object in `_known`) stays the same.
        self._token_whos: dict[str, tuple[AuthenticatedKey, AuthenticatedKey]] = {}
        self._browser_origins: frozenset[str] | None = None  # every origin some tenant allows (preflights)
        if invalidator is not None:
            invalidator.subscribe("tenant", self._forget_browser_origins)

    # --- lifecycle of the process ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start writing keys' last use in the background (also started by the first authenticated request)."""
        self._last_used.start()

    async def aclose(self) -> None:
        """Stop the background writer and write the last uses noted so far."""
        await self._last_used.stop()

    async def flush_last_used(self) -> int:
        """Write the last uses noted so far now (one statement); the number of keys written."""
        return await self._last_used.flush()

    # --- authentication -------------------------------------------------------------------------------------------
    async def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of a `Bearer <key>` header, or Unauthorized in the upstream's shape."""
        return (await self.authenticate_key(authorization)).tenant

    async def authenticate_key(self, authorization: str | None, *, note_use: bool = True) -> AuthenticatedKey:
        """The tenant, key and scopes of a `Bearer <key>` header, or Unauthorized (401 `Invalid API key`) when the
        key is unknown, revoked or expired, or its tenant is disabled.

        A warm key is answered from memory (app/tenants/auth_cache.py: a change made on any replica reaches it within
        the invalidation bound); a cold one costs one read. A key whose stored hash was made under a previous
        GATEWAY_SECRET_KEY (or before hashes recorded their secret) is re-keyed under the current one on the spot,
        once. Its use is noted in memory only.
        """
        token = bearer_token(authorization)
        if token is None:
            raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
        now = self._clock()
        if token.startswith(TOKEN_PREFIX):
            return await self._token_identity(token, now)
        if len(token) > _MAX_KEY_CHARS:
            raise Unauthorized("Invalid API key")
        current_id, current_hash = self._keys.key_id, self._keys.hash_tenant_key(token)
        who = self._known.get(current_hash, now)
        if who is None:
            who = await self._look_up(token, current_id, current_hash, now)
        if note_use:
            self._last_used.note(who.key_id, now)
        return who

    def known_key(self, authorization: str | None) -> AuthenticatedKey | None:
        """`authenticate_key` answered from memory only: None when the key is not known there (unknown, cold, or
        the caches are not trusted right now), for the caller to go the usual way. Its use is noted."""
        token = bearer_token(authorization)
        if token is None:
            return None
        now = self._clock()
        if token.startswith(TOKEN_PREFIX):
            return self._token_from_memory(token, now)
        if len(token) > _MAX_KEY_CHARS:
            return None
        who = self._known.get(self._keys.hash_tenant_key(token), now)
        if who is not None:
            self._last_used.note(who.key_id, now)
        return who

    def forget_known_keys(self) -> None:
        """Drop every key known in memory: each is looked up again at its next use."""
        self._known.drop_all()

    async def _look_up(self, token: str, current_id: str, current_hash: str, now: dt.datetime) -> AuthenticatedKey:
        generation = self._known.generation
        hashes = self._keys.tenant_key_hashes(token)
        async with self._sessions() as session:
            await reads_only(session)
            found = await repo.find_usable_key(session, [h for _, h in hashes], now)
        if found is None:
            raise Unauthorized("Invalid API key")
        key, tenant = found
        if key.key_hash != current_hash or key.hash_key_id != current_id:
            await self._rekey(key, current_hash, current_id, now)
        who = AuthenticatedKey(
            tenant=tenant, key_id=key.id, scopes=frozenset(parse_scopes(key.scopes)), expires_at=key.expires_at
        )
        self._known.put(current_hash, who, key.expires_at, generation)
        return who

    # --- end-user tokens ------------------------------------------------------------------------------------------
    async def _token_identity(self, token: str, now: dt.datetime) -> AuthenticatedKey:
        """Who an end-user token is, or Unauthorized: its signature, its expiry, then its minting key (from memory
        when warm, else one read by id) and the tenant's `tokens_valid_after`."""
        claims = self._tokens.claims(token)
        if claims is None:
            raise Unauthorized("Invalid token")
        if claims.expires_at <= now.timestamp():
            raise Unauthorized("This token has expired: ask for a new one")
        minter = self._known.get_key(claims.key_id, now)
        if minter is None:
            minter = await self._look_up_minter(claims.key_id, now)
        return self._token_who(token, claims, minter)

    def _token_from_memory(self, token: str, now: dt.datetime) -> AuthenticatedKey | None:
        """`_token_identity` from memory only; None when it cannot say (cold minting key) or refuses."""
        claims = self._tokens.claims(token)
        if claims is None or claims.expires_at <= now.timestamp():
            return None
        minter = self._known.get_key(claims.key_id, now)
        if minter is None:
            return None
        try:
            return self._token_who(token, claims, minter)
        except Unauthorized:
            return None

    def _token_who(self, token: str, claims: TokenClaims, minter: AuthenticatedKey) -> AuthenticatedKey:
        """The token's identity under its minting key as memory knows it now (kept while that stays the same)."""
        known = self._token_whos.get(token)
        if known is not None and known[0] is minter:
            return known[1]
        if minter.tenant.id != claims.tenant_id:
            raise Unauthorized("Invalid token")
        if not issued_after(claims, minter.tenant.tokens_valid_after):
            raise Unauthorized("This token was revoked: ask for a new one")
        who = AuthenticatedKey(
            tenant=minter.tenant,
            key_id=minter.key_id,
            scopes=claims.scopes & minter.scopes,
            end_user=claims.end_user,
            expires_at=from_unix(claims.expires_at),
        )
        if len(self._token_whos) >= _TOKEN_WHOS:
            self._token_whos.clear()  # rebuilt on use: a cheap bound
        self._token_whos[token] = (minter, who)
        return who

    async def _look_up_minter(self, key_id: str, now: dt.datetime) -> AuthenticatedKey:
        """A token's minting key by id, if it is still usable (its tenant active), kept in memory as a key is."""
        generation = self._known.generation
        async with self._sessions() as session:
            await reads_only(session)
            found = await repo.find_usable_key_by_id(session, key_id, now) if _KEY_ID.fullmatch(key_id) else None
        if found is None:
            raise Unauthorized("This token's key is no longer valid: ask for a new token")
        key, tenant = found
        who = AuthenticatedKey(
            tenant=tenant, key_id=key.id, scopes=frozenset(parse_scopes(key.scopes)), expires_at=key.expires_at
        )
        self._known.put_key(who, key.expires_at, generation)
        return who

    def mint_token(self, minter: AuthenticatedKey, request: TokenCreate) -> TokenOut:
        """A token for one end user of the minter's tenant: its scopes a subset of the key's, its lifetime never past
        the key's. Nothing is written: the token carries its claims, signed."""
        if minter.end_user is not None:  # the access rules refuse it first; a token never mints
            raise Forbidden("A token cannot mint tokens: mint with a tenant key, on your backend.")
        held = [s for s in TOKEN_SCOPES if s in minter.scopes]
        scopes = held if request.scopes is None else [s for s in TOKEN_SCOPES if s in request.scopes]
        missing = [s for s in scopes if s not in held]
        if missing or not scopes:
            raise Forbidden(
                f"A token's scopes must be among the minting key's ({', '.join(held) or 'none'}).",
                code="scope_not_held",
            )
        origins = None
        if request.origins is not None:
            try:
                origins = frozenset(normalize_origin(o) for o in request.origins)
            except ValueError as e:
                raise InvalidRequest(f"origins: {e}", param="origins") from None
        now = self._clock()
        expires = now + dt.timedelta(seconds=request.ttl_seconds)
        if minter.expires_at is not None:
            expires = min(expires, minter.expires_at)
        end_user = EndUser(
            id=request.end_user,
            images_per_day=request.images_per_day,
            submits_per_minute=request.submits_per_minute,
            origins=origins,
        )
        claims = TokenClaims(
            tenant_id=minter.tenant.id,
            key_id=minter.key_id,
            end_user=end_user,
            scopes=frozenset(scopes),
            issued_at_ms=unix_ms(now),
            expires_at=int(expires.timestamp()),
        )
        token = self._keys.sign_token(claims.encode())
        return TokenOut(token=token, expires_at=claims.expires_at, end_user=end_user.id, scopes=scopes)

    async def minting_key(self, tenant_ref: str) -> AuthenticatedKey:
        """The key a server-side minter uses for a tenant (the try-it page, app/frontends/page.py): its newest
        usable key with the `mint` scope. 409 `no_minting_key` when it has none."""
        now = self._clock()
        async with self._sessions() as session:
            await reads_only(session)
            tenant = await find(session, tenant_ref)
            key = await repo.newest_minting_key(session, tenant.id, now)
        if key is None or tenant.status != TenantStatus.ACTIVE:
            raise Conflict(
                f"Tenant {tenant.name!r} has no usable key with the 'mint' scope to mint tokens with.",
                code="no_minting_key",
            )
        return AuthenticatedKey(
            tenant=tenant, key_id=key.id, scopes=frozenset(parse_scopes(key.scopes)), expires_at=key.expires_at
        )

    async def revoke_tokens(self, tenant_ref: str, *, actor: str) -> TokensRevoked:
        """Refuse every token minted for the tenant until now, on every replica within the invalidation bound (a
        token minted from now on works)."""
        async with self._action(actor, "tokens.revoke", "tenant", tenant_ref) as audited:
            session, now = audited.session, audited.now
            tenant = await find(session, tenant_ref)
            tenant.tokens_valid_after = now
            tenant.updated_at = now
            await session.flush()
            await record(session, "tenant", tenant.id, now=now)
            audited.done(tenant.id, {"tokens_valid_after": unix_ms(now) / 1000})
        return TokensRevoked(tenant_id=tenant.id, tokens_valid_after=int(now.timestamp()))

    # --- browser origins (CORS: app/access/cors.py) ---------------------------------------------------------------
    def origins_of(self, authorization: str | None) -> list[str] | None:
        """The browser origins the caller's tenant allows, from memory (None: not known there, or the tenant has
        none of its own: the gateway's default applies)."""
        token = bearer_token(authorization)
        if token is None:
            return None
        now = self._clock()
        if token.startswith(TOKEN_PREFIX):
            who = self._token_from_memory(token, now)
        else:
            who = self._known.get(self._keys.hash_tenant_key(token), now) if len(token) <= _MAX_KEY_CHARS else None
        return None if who is None else who.tenant.cors_origins

    async def browser_origins(self) -> frozenset[str]:
        """Every origin some active tenant allows (a preflight names no tenant): from memory, read again after any
        tenant changed."""
        if self._browser_origins is not None and self._known.usable:
            return self._browser_origins
        generation = self._known.generation
        async with self._sessions() as session:
            await reads_only(session)
            found = frozenset(o for origins in await repo.tenant_cors_origins(session) for o in origins)
        if self._known.usable and generation == self._known.generation:
            self._browser_origins = found
        return found

    def _forget_browser_origins(self, tenant_id: str) -> None:
        self._browser_origins = None

    async def _rekey(self, key: TenantKey, new_hash: str, hash_key_id: str, now: dt.datetime) -> None:
        try:
            async with self._sessions.begin() as session:
                changed = await repo.rekey(
                    session, key.id, old_hash=key.key_hash, new_hash=new_hash, hash_key_id=hash_key_id
                )
                if changed:
                    await record(session, "tenant_key", key.id, now=now)
        except Exception as e:  # the key is valid all the same: try again on its next use
            log.warning("could not re-key tenant key %s under the current secret: %s", key.id, type(e).__name__)
            return
        if changed:
            log.info("tenant key %s re-keyed under the current GATEWAY_SECRET_KEY", key.id)

    # --- tenants --------------------------------------------------------------------------------------------------
    async def create(
        self,
        name: str,
        *,
        key: str | None = None,
        limits: Mapping[str, int | None] | None = None,
        actor: str = ACTOR_SYSTEM,
    ) -> tuple[Tenant, str]:
        """Create a tenant (with the default limits unless given; given: omitted ones are unlimited) and its first
        key, returned once in plaintext."""
        async with self._action(actor, "tenant.create", "tenant", name) as audited:
            tenant, _, plaintext = await self._create(audited, name, key=key, limits=limits)
        return tenant, plaintext

    async def create_tenant(self, name: str, limits: LimitsUpdate | None = None, *, actor: str) -> TenantCreated:
        """Create a tenant and its first key (shown once). Limits given are set; the others take the defaults."""
        chosen = {**self._default_limits, **(limits.changes() if limits is not None else {})}
        async with self._action(actor, "tenant.create", "tenant", name) as audited:
            tenant, key, plaintext = await self._create(audited, name, key=None, limits=chosen)
        return TenantCreated(**TenantOut.of(tenant).model_dump(), key=NewKeyOut.new(key, plaintext, audited.now))

    async def get(self, tenant_ref: str) -> Tenant:
        """A tenant by id or by name, or 404."""
        async with self._sessions() as session:
            return await find(session, tenant_ref)

    async def describe(self, tenant_ref: str) -> TenantOut:
        return TenantOut.of(await self.get(tenant_ref))

    async def list_tenants(
        self, *, limit: int = DEFAULT_PAGE, cursor: str | None = None, name_contains: str | None = None
    ) -> TenantList:
        """A page of tenants (deleted ones left out) in id order (ids are time-sortable: oldest first); with
        `name_contains`, those whose name holds it (case-insensitively)."""
        page = TENANT_CURSOR.request(limit, cursor)
        async with self._sessions() as session:
            rows = await repo.page_tenants(
                session,
                limit=page.fetch,
                after_id=page.after,
                name_contains=name_contains.replace("\x00", "") if name_contains else None,
            )
        return TenantList.of(rows, page, TenantOut.of)

    async def update_tenant(
        self,
        tenant_ref: str,
        *,
        name: str | None = None,
        status: TenantStatus | None = None,
        cors_origins: list[str] | EllipsisType | None = ...,
        actor: str,
    ) -> TenantOut:
        """Rename and/or enable or disable a tenant, or set its browser origins (`None`: the gateway's default;
        `...`: unchanged). Disabled: every key of it is refused (401); its open tasks still settle. The event is
        `tenant.disable` or `tenant.enable` for a status change alone, else `tenant.update`."""
        if status is not None and status not in (TenantStatus.ACTIVE, TenantStatus.DISABLED):
            raise InvalidRequest("status must be 'active' or 'disabled'", param="status")
        new_name = None if name is None else _checked_name(name)
        origins = cors_origins if cors_origins is ... or cors_origins is None else _checked_origins(cors_origins)
        async with self._action(actor, "tenant.update", "tenant", tenant_ref) as audited:
            session, now = audited.session, audited.now
            tenant = await find(session, tenant_ref)
            changes: dict[str, Any] = {}
            if new_name is not None and new_name != tenant.name:
                other = await repo.get_by_name(session, new_name)
                if other is not None and other.id != tenant.id:
                    raise _name_taken(new_name, other)
                changes["name"] = {"from": tenant.name, "to": new_name}
                tenant.name = new_name
            if status is not None and status != tenant.status:
                changes["status"] = {"from": tenant.status, "to": status}
                tenant.status = status
            if origins is not ... and origins != tenant.cors_origins:
                changes["cors_origins"] = {"from": tenant.cors_origins, "to": origins}
                tenant.cors_origins = origins
            if changes:
                tenant.updated_at = now
                await session.flush()
                await record(session, "tenant", tenant.id, now=now)
            action = "tenant.update"
            if status is not None and changes.keys() <= {"status"}:
                action = "tenant.disable" if status == TenantStatus.DISABLED else "tenant.enable"
            audited.done(tenant.id, {"changes": changes}, action=action)
        return TenantOut.of(tenant)

    async def disable(self, tenant_ref: str, *, actor: str) -> TenantOut:
        """Refuse every key of the tenant (401) until it is enabled again; its ledger and open tasks stay."""
        return await self.update_tenant(tenant_ref, status=TenantStatus.DISABLED, actor=actor)

    async def delete(self, tenant_ref: str, *, actor: str) -> TenantOut:
        """Delete a tenant for good: every key refused (401), and the tenant, its keys, limits and usage are gone
        from the ops API and the command line (404). Nothing is erased: its ledger and usage rows stay (accounting),
        its open tasks still settle, and its name stays taken. `disable` is the reversible way."""
        async with self._action(actor, "tenant.delete", "tenant", tenant_ref) as audited:
            session, now = audited.session, audited.now
            tenant = await find(session, tenant_ref)
            previous = tenant.status
            tenant.status = TenantStatus.DELETED
            tenant.updated_at = now
            await session.flush()
            await record(session, "tenant", tenant.id, now=now)
            audited.done(
                tenant.id, {"name": tenant.name, "changes": {"status": {"from": previous, "to": TenantStatus.DELETED}}}
            )
        return TenantOut.of(tenant)

    async def enable(self, tenant_ref: str, *, actor: str) -> TenantOut:
        return await self.update_tenant(tenant_ref, status=TenantStatus.ACTIVE, actor=actor)

    # --- limits ---------------------------------------------------------------------------------------------------
    async def limits(self, tenant_ref: str) -> Limits:
        return Limits.of(await self.get(tenant_ref))

    async def set_limits(self, tenant_ref: str, update: LimitsUpdate, *, actor: str = ACTOR_SYSTEM) -> Limits:
        """Apply the limits given (None = unlimited); the others stay as they are."""
        async with self._action(actor, "limits.update", "tenant", tenant_ref) as audited:
            session, now = audited.session, audited.now
            tenant = await find(session, tenant_ref)
            changes = update.changes()
            for name, value in changes.items():
                setattr(tenant, name, value)
            tenant.updated_at = now
            await session.flush()
            await record(session, "tenant", tenant.id, now=now)
            audited.done(tenant.id, {"changes": changes})
        return Limits.of(tenant)

    # --- keys -----------------------------------------------------------------------------------------------------
    async def create_key(
        self,
        tenant_ref: str,
        *,
        name: str | None = None,
        scopes: Sequence[str] | None = None,
        expires_at: int | None = None,
        expires_in_s: int | None = None,
        actor: str,
    ) -> NewKeyOut:
        """Another key for a tenant (shown once). Scopes default to all; no expiry unless given."""
        key_name = (name or "").strip()
        problem = key_name_problem(key_name)
        if problem is not None:
            raise InvalidRequest(f"The key name {problem}.", param="name")
        chosen = _checked_scopes(scopes)
        if expires_at is not None and expires_in_s is not None:
            raise InvalidRequest("Give expires_at or expires_in_s, not both.", param="expires_at")
        if expires_in_s is not None and not 1 <= expires_in_s <= MAX_EXPIRES_IN_S:
            raise InvalidRequest(f"expires_in_s must be 1 to {MAX_EXPIRES_IN_S} seconds.", param="expires_in_s")
        async with self._action(actor, "key.create", "tenant", tenant_ref) as audited:
            session, now = audited.session, audited.now
            tenant = await find(session, tenant_ref)
            expiry: dt.datetime | None = None
            if expires_at is not None:
                expiry = from_unix(expires_at)
                if expiry is None or expiry <= now:
                    raise Conflict("expires_at must be in the future.", param="expires_at", code="invalid_expiry")
            elif expires_in_s is not None:
                expiry = now + dt.timedelta(seconds=expires_in_s)
            key, plaintext = await self._insert_key(
                session, tenant.id, name=key_name, scopes=chosen, expires_at=expiry, rotated_from_id=None, now=now
            )
            audited.done(
                key.id,
                {"tenant_id": tenant.id, "name": key_name, "scopes": chosen, "expires_at": to_unix(expiry)},
                target_type="tenant_key",
            )
        return NewKeyOut.new(key, plaintext, now)

    async def list_keys(self, tenant_ref: str, *, limit: int = DEFAULT_PAGE, cursor: str | None = None) -> KeyList:
        """A page of a tenant's keys (revoked and expired ones included, with their status), oldest first."""
        page = KEY_CURSOR.request(limit, cursor)
        async with self._sessions() as session:
            tenant = await find(session, tenant_ref)
            rows = await repo.page_keys(session, tenant.id, limit=page.fetch, after_id=page.after)
        now = self._clock()
        return KeyList.of(rows, page, lambda k: KeyOut.of(k, now, self._last_used.pending(k.id)))

    async def rotate_key(self, key_id: str, grace_seconds: int = DEFAULT_GRACE_S, *, actor: str) -> NewKeyOut:
        """A new key (same tenant, name and scopes; shown once) that works at once; the old one keeps working for
        `grace_seconds` (never past its own expiry), then is refused. A key that expires keeps its lifetime: the new
        key expires as long after its creation as the old one did after its own."""
        if not 0 <= grace_seconds <= MAX_GRACE_S:
            raise InvalidRequest(f"grace_seconds must be 0 to {MAX_GRACE_S}.", param="grace_seconds")
        async with self._action(actor, "key.rotate", "tenant_key", key_id) as audited:
            session, now = audited.session, audited.now
            old = await find_key(session, key_id, for_update=True)
            if old.revoked_at is not None:
                raise Conflict(f"Key {old.id!r} is revoked: create a new key instead", code="key_revoked")
            if old.expires_at is not None and old.expires_at <= now:
                raise Conflict(f"Key {old.id!r} has expired: create a new key instead", code="key_expired")
            lifetime = None if old.expires_at is None else old.expires_at - old.created_at
            new, plaintext = await self._insert_key(
                session,
                old.tenant_id,
                name=old.name,
                scopes=parse_scopes(old.scopes),
                expires_at=None if lifetime is None else now + lifetime,
                rotated_from_id=old.id,
                now=now,
            )
            grace_end = now + dt.timedelta(seconds=grace_seconds)
            old.expires_at = grace_end if old.expires_at is None else min(old.expires_at, grace_end)
            await session.flush()
            await record(session, "tenant_key", old.id, now=now)
            audited.done(
                old.id,
                {
                    "tenant_id": old.tenant_id,
                    "new_key_id": new.id,
                    "grace_seconds": grace_seconds,
                    "old_key_expires_at": to_unix(old.expires_at),
                },
            )
        return NewKeyOut.new(new, plaintext, now)

    async def revoke_key(self, key_id: str, *, actor: str) -> KeyOut:
        """Refuse the key from now on (401). Revoking a revoked key changes nothing."""
        async with self._action(actor, "key.revoke", "tenant_key", key_id) as audited:
            session, now = audited.session, audited.now
            key = await find_key(session, key_id, for_update=True)
            already = key.revoked_at is not None
            if not already:
                key.revoked_at = now
                await session.flush()
                await record(session, "tenant_key", key.id, now=now)
            audited.done(key.id, {"tenant_id": key.tenant_id, "already_revoked": already})
        return KeyOut.of(key, now, self._last_used.pending(key.id))

    # --- the zero-config demo tenant ------------------------------------------------------------------------------
    async def ensure_demo_key(self, stored: str | None) -> str:
        """The zero-config demo tenant's key: `stored` while it still works, else a new demo tenant's key."""
        if stored is not None:
            try:
                who = await self.authenticate_key(f"Bearer {stored}", note_use=False)
            except Unauthorized:
                pass  # the database was reset under the key file: make a new demo tenant
            else:
                if "mint" not in who.scopes:  # a demo from before tokens: the try-it page mints with a key of its own
                    await self.create_key(who.tenant.id, name="try-it page", scopes=SCOPES, actor=ACTOR_SYSTEM)
                return stored
        async with self._action(ACTOR_SYSTEM, "tenant.create", "tenant", DEMO_TENANT) as audited:
            name = DEMO_TENANT
            if await repo.get_by_name(audited.session, name) is not None:
                name = f"{DEMO_TENANT}-{secrets.token_hex(3)}"
            # The demo's key mints too: the try-it page's tokens (app/frontends/page.py) are minted with it.
            _, _, key = await self._create(audited, name, key=new_tenant_key(), limits=None, scopes=SCOPES)
        return key

    # --- helpers --------------------------------------------------------------------------------------------------
    @asynccontextmanager
    async def _action(self, actor: str, action: str, target_type: str, target_ref: str) -> AsyncIterator[AuditedAction]:
        """One audited admin action (`AuditService.action`); once it has committed, this process's caches drop what
        it changed at once, the other processes' within the invalidation bound."""
        async with self._audit.action(actor, action, target_type, target_ref, translate=_name_conflict) as audited:
            yield audited
        if self._invalidator is not None:
            self._invalidator.apply_recorded(audited.session)

    async def _create(
        self,
        audited: AuditedAction,
        name: str,
        *,
        key: str | None,
        limits: Mapping[str, int | None] | None,
        scopes: Sequence[Scope] = DEFAULT_SCOPES,
    ) -> tuple[Tenant, TenantKey, str]:
        session, now = audited.session, audited.now
        name = _checked_name(name)
        other = await repo.get_by_name(session, name)
        if other is not None:
            raise _name_taken(name, other)
        chosen = self._default_limits if limits is None else {n: limits.get(n) for n in LIMIT_NAMES}
        tenant = Tenant(
            id=new_id("ten_"), name=name, status=TenantStatus.ACTIVE, created_at=now, updated_at=now, **chosen
        )
        await repo.insert_tenant(session, tenant)
        key_row, plaintext = await self._insert_key(
            session, tenant.id, name="", scopes=scopes, expires_at=None, rotated_from_id=None, now=now, key=key
        )
        audited.done(tenant.id, {"name": name, "limits": values_of(tenant), "key_id": key_row.id})
        return tenant, key_row, plaintext

    async def _insert_key(
        self,
        session: AsyncSession,
        tenant_id: str,
        *,
        name: str,
        scopes: Sequence[str],
        expires_at: dt.datetime | None,
        rotated_from_id: str | None,
        now: dt.datetime,
        key: str | None = None,
    ) -> tuple[TenantKey, str]:
        plaintext = key or new_tenant_key()
        row = TenantKey(
            id=new_id("key_"),
            tenant_id=tenant_id,
            key_hash=self._keys.hash_tenant_key(plaintext),
            hash_key_id=self._keys.key_id,
            prefix=plaintext[:10],
            name=name,
            scopes=",".join(s for s in SCOPES if s in scopes),
            created_at=now,
            expires_at=expires_at,
            rotated_from_id=rotated_from_id,
        )
        await repo.insert_key(session, row)
        return row, plaintext


async def find(session: AsyncSession, tenant_ref: str) -> Tenant:
    """A tenant by id or by name inside the caller's transaction, or 404 (for services of other features)."""
    # A NUL cannot be in any id or name, and PostgreSQL refuses it in a text parameter: an unknown tenant.
    valid = "\x00" not in tenant_ref
    tenant = valid and (await repo.get(session, tenant_ref) or await repo.get_by_name(session, tenant_ref))
    if not tenant or tenant.status == TenantStatus.DELETED:
        raise NotFound(f"Tenant {tenant_ref!r} not found", code="tenant_not_found")
    return tenant


async def keys_pending_rekey(session: AsyncSession, hash_key_id: str, now: dt.datetime) -> int:
    """Usable tenant keys hashed with another secret than `hash_key_id` (re-keyed on their next use), in the caller's
    transaction: `secrets rekey` reports both halves of a secret rotation (app/upstream/service.py)."""
    return await repo.count_keys_not_under(session, hash_key_id, now)


async def find_key(session: AsyncSession, key_id: str, *, for_update: bool = False) -> TenantKey:
    """A tenant key by its public id, or 404 `key_not_found`."""
    found = await repo.get_key(session, key_id, for_update=for_update) if _KEY_ID.fullmatch(key_id) else None
    if found is None or found[1].status == TenantStatus.DELETED:  # a deleted tenant's keys are gone with it
        raise NotFound(f"Key {key_id!r} not found", code="key_not_found")
    return found[0]


def _name_conflict(error: Exception) -> GatewayError | None:
    """A concurrent change took the name between our check and our write (the unique constraint said so)."""
    if isinstance(error, IntegrityError):
        return Conflict("A tenant with this name already exists", param="name")
    return None


def _name_taken(name: str, other: Tenant) -> Conflict:
    if other.status == TenantStatus.DELETED:
        return Conflict(f"The name '{name}' belongs to a deleted tenant: choose another", param="name")
    return Conflict(f"A tenant named '{name}' already exists", param="name")


def _checked_name(name: str) -> str:
    stripped = name.strip()
    problem = name_problem(stripped)
    if problem is not None:
        raise InvalidRequest(f"The tenant name {problem}.", param="name")
    return stripped


def _checked_scopes(scopes: Sequence[str] | None) -> list[Scope]:
    if scopes is None:
        return list(DEFAULT_SCOPES)
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise InvalidRequest(f"scopes must be one or more of: {', '.join(SCOPES)}.", param="scopes")
    return [s for s in SCOPES if s in scopes]


def _checked_origins(origins: Sequence[str]) -> list[str]:
    """Browser origins as stored: each normalised (`*` = any), once, in the order given."""
    try:
        checked = [normalize_origin(o, allow_any=True) for o in origins]
    except ValueError as e:
        raise InvalidRequest(f"cors_origins: {e}", param="cors_origins") from None
    return list(dict.fromkeys(checked))
