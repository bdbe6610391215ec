"""The ops API's shapes for tenants and tenant keys."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

from app.contract import BLANK_PATTERN, INTEGRAL, ContractError, text_problem
from app.core.clock import to_unix
from app.core.cors import ANY_ORIGIN_PATTERN, ORIGIN_PATTERN
from app.core.limits import LimitsUpdate, LimitValue, LimitValues, values_of
from app.core.pagination import Cursor, Page
from app.models import KeyStatus, Tenant, TenantKey, TenantStatus
from app.models.task import END_USER_MAX_CHARS
from app.tenants.tokens import DEFAULT_TTL_S, MAX_TTL_S
from app.tenants.tokens import MAX_ORIGINS as MAX_TOKEN_ORIGINS

# --- bounds -------------------------------------------------------------------------------------------------------
MAX_NAME_CHARS = 200  # Tenant.name and TenantKey.name are String(200)
MAX_GRACE_S = 30 * 24 * 3600
DEFAULT_GRACE_S = 3600
MAX_EXPIRES_IN_S = 10 * 366 * 24 * 3600  # ten years
MAX_EXPIRES_AT = 4_102_444_800  # 2100-01-01T00:00:00Z
TENANT_CURSOR = Cursor.of_ids("ten_")
KEY_CURSOR = Cursor.of_ids("key_")

Scope = Literal["submit", "read", "mint"]
SCOPES: tuple[Scope, ...] = ("submit", "read", "mint")
# What a key gets unless told otherwise: minting end-user tokens is asked for (`mint`), never given by default.
DEFAULT_SCOPES: tuple[Scope, ...] = ("submit", "read")
TokenScope = Literal["submit", "read"]
TOKEN_SCOPES: tuple[TokenScope, ...] = ("submit", "read")  # a token can never mint
# What ops set (deleting is DELETE's, for good).
SettableStatus = Literal[TenantStatus.ACTIVE, TenantStatus.DISABLED]


# Names are shown to people (CLI listings, the admin API). Besides the C0 controls no text column may hold: DEL, the
# C1 controls (U+009B opens a terminal escape sequence) and the bidirectional controls (after U+202E, `acme` followed
# by `1-nimda` reads as `acmeadmin-1`). One rule for tenant and key names, in the API's schema and in `name_problem`.
_DISPLAY_CONTROLS = r"\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_DISPLAY_CONTROL = re.compile(f"[{_DISPLAY_CONTROLS}]")
NAME_PATTERN = rf"^[^\x00-\x1f{_DISPLAY_CONTROLS}]*$"


def _name_schema(schema: dict[str, Any]) -> None:
    schema["pattern"] = NAME_PATTERN
    schema["not"] = {"pattern": BLANK_PATTERN}
    schema["description"] = (
        "Not blank, no control characters (bidirectional ones included); leading and trailing spaces are dropped."
    )


def _key_name_schema(schema: dict[str, Any]) -> None:
    schema["pattern"] = NAME_PATTERN
    schema["description"] = (
        "A label for people (e.g. where the key is used); no control characters (bidirectional ones included)."
    )


TenantName = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_CHARS, json_schema_extra=_name_schema)]
MAX_CORS_ORIGINS = 20
OriginText = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=300,
        json_schema_extra={"pattern": ORIGIN_PATTERN},
        description="`http(s)://host[:port]`, nothing after it (a page's `Origin`).",
    ),
]
AnyOriginText = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=300,
        json_schema_extra={"pattern": ANY_ORIGIN_PATTERN},
        description="`http(s)://host[:port]`, nothing after it, or `*` for any.",
    ),
]
KeyName = Annotated[StrictStr, Field(max_length=MAX_NAME_CHARS, json_schema_extra=_key_name_schema)]


def name_problem(name: str) -> str | None:
    """Why `name` (already stripped) cannot name a tenant, or None."""
    if not name:
        return "must not be blank"
    return key_name_problem(name)


def key_name_problem(name: str) -> str | None:
    """Why `name` cannot name a key (or, not blank, a tenant), or None."""
    if len(name) > MAX_NAME_CHARS:
        return f"must be at most {MAX_NAME_CHARS} characters"
    found = _DISPLAY_CONTROL.search(name)
    if found is not None:
        return f"must not contain control or bidirectional formatting characters (found U+{ord(found.group()):04X})"
    return text_problem(name)


def parse_scopes(stored: str) -> list[Scope]:
    """The stored comma-separated scopes as a list, in the canonical order (unknown words are ignored)."""
    given = {s.strip() for s in stored.split(",")}
    return [s for s in SCOPES if s in given]


def _unique_items(schema: dict[str, Any]) -> None:
    schema["uniqueItems"] = True


def _no_repeated_scope(value: list[str] | None) -> list[str] | None:
    """The `scopes` of a key or a token: each at most once (the schema's `uniqueItems`)."""
    if value is not None and len(set(value)) != len(value):
        raise ContractError("The 'scopes' field must not repeat a scope.", param="scopes")
    return value


# --- requests -----------------------------------------------------------------------------------------------------
class TenantCreate(BaseModel):
    """A new tenant: its name, and limits (omitted ones take the gateway's defaults for new tenants)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"name": "acme", "limits": {"daily_images": 500}}}
    )

    name: TenantName
    limits: LimitsUpdate | None = Field(
        None, description="Limits to set (`null` = unlimited); the others take the defaults for new tenants."
    )

    @field_validator("name")
    @classmethod
    def _storable_name(cls, value: str) -> str:
        problem = name_problem(value.strip())
        if problem is not None:
            raise ContractError(f"The 'name' field {problem}.", param="name")
        return value.strip()


class TenantUpdate(BaseModel):
    """Fields given are changed; fields omitted (or null) stay as they are."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"status": "disabled"}})

    name: TenantName | None = None
    status: SettableStatus | None = Field(
        None, description="`disabled`: every key of the tenant is refused (401); its open tasks still settle."
    )
    cors_origins: Annotated[list[AnyOriginText], Field(max_length=MAX_CORS_ORIGINS)] | None = Field(
        None,
        description="Browser origins whose pages may read this tenant's answers (CORS): `scheme://host[:port]`, or "
        "`*` for any. Given as `null`: the gateway's default (GATEWAY_CORS_ORIGINS) again; `[]`: none.",
    )

    @field_validator("name")
    @classmethod
    def _storable_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = name_problem(value.strip())
        if problem is not None:
            raise ContractError(f"The 'name' field {problem}.", param="name")
        return value.strip()


def _one_expiry_schema(schema: dict[str, Any]) -> None:
    schema["not"] = {"required": ["expires_at", "expires_in_s"]}
    schema["example"] = {"name": "ci", "scopes": ["read"], "expires_in_s": 86400}


class KeyCreate(BaseModel):
    """A new key for a tenant. Give `expires_at` or `expires_in_s`, not both; neither: the key never expires."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_expiry_schema)

    name: KeyName | None = None
    scopes: (
        Annotated[list[Scope], Field(min_length=1, max_length=len(SCOPES), json_schema_extra=_unique_items)] | None
    ) = Field(
        None,
        description="`submit` (create generations, upload images), `read` (task status, usage), `mint` (end-user "
        "tokens: POST /v1/tokens). Default: `submit` and `read`.",
    )
    expires_at: Annotated[StrictInt, Field(ge=0, le=MAX_EXPIRES_AT), INTEGRAL] | None = Field(
        None, description="Unix time the key stops working (must be in the future)."
    )
    expires_in_s: Annotated[StrictInt, Field(ge=1, le=MAX_EXPIRES_IN_S), INTEGRAL] | None = Field(
        None, description="Seconds from now the key stops working."
    )

    @field_validator("name")
    @classmethod
    def _storable_name(cls, value: str | None) -> str | None:
        problem = None if value is None else key_name_problem(value)
        if problem is not None:
            raise ContractError(f"The 'name' field {problem}.", param="name")
        return value

    _unique_scopes = field_validator("scopes")(_no_repeated_scope)

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyCreate:
        if {"expires_at", "expires_in_s"} <= self.model_fields_set:
            raise ContractError("Give expires_at or expires_in_s, not both.", param="expires_at")
        return self


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"grace_seconds": 3600}})

    grace_seconds: Annotated[StrictInt, Field(ge=0, le=MAX_GRACE_S), INTEGRAL] = Field(
        DEFAULT_GRACE_S,
        description="How long the old key keeps working (0: it stops at once; at most 30 days, and never past its "
        "own expiry).",
    )


# --- answers ------------------------------------------------------------------------------------------------------
class Limits(LimitValues):
    """A tenant's limits; `null` means unlimited."""

    tenant_id: str

    @classmethod
    def of(cls, tenant: Tenant) -> Limits:
        return cls(tenant_id=tenant.id, **values_of(tenant))


class TenantOut(BaseModel):
    object: Literal["tenant"] = "tenant"
    id: str
    name: str
    status: TenantStatus = Field(
        description="`active`; `disabled` (every key refused, reversible); `deleted` (answered once, by DELETE)."
    )
    limits: LimitValues
    cors_origins: list[str] | None = Field(
        description="Browser origins whose pages may read this tenant's answers; null: the gateway's default."
    )
    created_at: int = Field(description="Unix time.")
    updated_at: int = Field(description="Unix time.")

    @classmethod
    def of(cls, tenant: Tenant) -> TenantOut:
        return cls(
            id=tenant.id,
            name=tenant.name,
            status=TenantStatus(tenant.status),
            limits=LimitValues(**values_of(tenant)),
            cors_origins=None if tenant.cors_origins is None else list(tenant.cors_origins),
            created_at=to_unix(tenant.created_at) or 0,
            updated_at=to_unix(tenant.updated_at) or 0,
        )


def key_status(key: TenantKey, now: dt.datetime) -> KeyStatus:
    if key.revoked_at is not None:
        return KeyStatus.REVOKED
    if key.expires_at is not None and key.expires_at <= now:
        return KeyStatus.EXPIRED
    return KeyStatus.ACTIVE


class KeyOut(BaseModel):
    """A tenant key as listings show it: its public id and prefix, never the key itself."""

    object: Literal["tenant_key"] = "tenant_key"
    id: str = Field(description="The key's public id (not the key).")
    tenant_id: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    name: str
    scopes: list[Scope]
    status: KeyStatus
    created_at: int = Field(description="Unix time.")
    expires_at: int | None = Field(description="Unix time; null: never.")
    revoked_at: int | None
    last_used_at: int | None = Field(
        description="Unix time of the last authenticated request (updated every few seconds)."
    )
    rotated_from_id: str | None = Field(description="The key this one replaced by a rotation.")

    @classmethod
    def of(cls, key: TenantKey, now: dt.datetime, last_used_at: dt.datetime | None = None) -> KeyOut:
        used = max((t for t in (key.last_used_at, last_used_at) if t is not None), default=None)
        return cls(
            id=key.id,
            tenant_id=key.tenant_id,
            prefix=key.prefix,
            name=key.name,
            scopes=parse_scopes(key.scopes),
            status=key_status(key, now),
            created_at=to_unix(key.created_at) or 0,
            expires_at=to_unix(key.expires_at),
            revoked_at=to_unix(key.revoked_at),
            last_used_at=to_unix(used),
            rotated_from_id=key.rotated_from_id,
        )


class NewKeyOut(KeyOut):
    """A key just made: the only answer that carries the key itself."""

    object: Literal["tenant_key"] = "tenant_key"
    key: str = Field(description="The API key (`sk-gw-...`): shown this once, stored only as a keyed hash.")

    @classmethod
    def new(cls, key: TenantKey, plaintext: str, now: dt.datetime) -> NewKeyOut:
        return cls(**KeyOut.of(key, now).model_dump(), key=plaintext)


class TenantCreated(TenantOut):
    """A new tenant and its first key (the key itself shown this once)."""

    key: NewKeyOut


class TenantList(Page[TenantOut]):
    """Tenants, oldest first."""


class KeyList(Page[KeyOut]):
    """A tenant's keys, oldest first."""


# --- end-user tokens (app/tenants/tokens.py) ------------------------------------------------------------------------
def _end_user_schema(schema: dict[str, Any]) -> None:
    schema["pattern"] = NAME_PATTERN
    schema["not"] = {"pattern": BLANK_PATTERN}
    schema["description"] = (
        "Your own id for the person the token is for (up to 128 characters, no control characters): their tasks "
        "and their usage are theirs."
    )


EndUserId = Annotated[StrictStr, Field(min_length=1, max_length=END_USER_MAX_CHARS, json_schema_extra=_end_user_schema)]


class TokenCreate(BaseModel):
    """A token for one end user of the tenant, minted by the tenant's backend with a key that has the `mint` scope."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "end_user": "user-4821",
                "ttl_seconds": 900,
                "scopes": ["submit", "read"],
                "images_per_day": 20,
                "submits_per_minute": 5,
                "origins": ["https://app.example.com"],
            }
        },
    )

    end_user: EndUserId
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=MAX_TTL_S), INTEGRAL] = Field(
        DEFAULT_TTL_S, description=f"Seconds the token works (at most {MAX_TTL_S}, and never past the minting key)."
    )
    scopes: (
        Annotated[list[TokenScope], Field(min_length=1, max_length=len(TOKEN_SCOPES), json_schema_extra=_unique_items)]
        | None
    ) = Field(None, description="A subset of the minting key's scopes (a token never mints). Default: the key's.")
    images_per_day: LimitValue = Field(
        None, description="The end user's images per UTC day, counted inside the tenant's (null: the tenant's only)."
    )
    submits_per_minute: LimitValue = Field(
        None, description="The end user's submits per minute, inside the tenant's (null: the tenant's only)."
    )
    origins: Annotated[list[OriginText], Field(min_length=1, max_length=MAX_TOKEN_ORIGINS)] | None = Field(
        None, description="The only browser origins the token may be used from (403 from any other `Origin`)."
    )

    @field_validator("end_user")
    @classmethod
    def _storable_end_user(cls, value: str) -> str:
        problem = name_problem(value) if value.strip() else "must not be blank"
        if problem is not None:
            raise ContractError(f"The 'end_user' field {problem}.", param="end_user")
        return value

    _unique_scopes = field_validator("scopes")(_no_repeated_scope)


class TokenOut(BaseModel):
    """A token just minted: hand it to the end user's browser, which sends it as `Authorization: Bearer <token>`."""

    object: Literal["token"] = "token"
    token: str = Field(description="The token (`gwt_...`): signed, not stored; works until `expires_at`.")
    expires_at: int = Field(description="Unix time the token stops working.")
    end_user: str
    scopes: list[TokenScope]


class TokensRevoked(BaseModel):
    """Every token the tenant's keys minted until now is refused (on every replica within a second)."""

    object: Literal["token_revocation"] = "token_revocation"
    tenant_id: str
    tokens_valid_after: int = Field(description="Unix time: tokens minted at or before it are refused.")
