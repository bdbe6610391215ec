"""The ops API's shapes for the upstream key pool. No answer ever carries a key."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator
from pydantic.json_schema import SkipJsonSchema

from app.contract import BLANK_PATTERN, INTEGRAL, NO_CONTROL_PATTERN, ContractError, text_problem
from app.core.clock import to_unix
from app.core.pagination import Cursor, Page
from app.models import UpstreamKey, UpstreamKeyStatus
from app.upstream.pool import effective_status

MAX_NAME_CHARS = 200  # UpstreamKey.name is String(200)
MAX_SECRET_CHARS = 512
MAX_WEIGHT = 1000
MAX_KEY_IN_FLIGHT = 1_000_000
FINGERPRINT_CHARS = 8
# What an upstream API key can be: printable ASCII without spaces (it is sent in an HTTP header).
SECRET_PATTERN = r"^[\x21-\x7e]+$"
# Ids the gateway mints (`upk_` + hex); any other id names no key and is answered 404 without a query.
KEY_ID = re.compile(r"[A-Za-z0-9_]{1,40}")
KEY_CURSOR = Cursor.of_ids("upk_")


def _name_schema(schema: dict[str, Any]) -> None:
    schema["pattern"] = NO_CONTROL_PATTERN
    schema["not"] = {"pattern": BLANK_PATTERN}
    schema["description"] = "A label for people; not blank, no control characters (surrounding spaces are dropped)."


def _secret_schema(schema: dict[str, Any]) -> None:
    schema["pattern"] = SECRET_PATTERN
    schema["writeOnly"] = True
    schema["description"] = "The upstream API key: stored encrypted, never shown again (printable ASCII, no spaces)."


Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_CHARS, json_schema_extra=_name_schema)]
Weight = Annotated[StrictInt, Field(ge=1, le=MAX_WEIGHT), INTEGRAL]
Cap = Annotated[StrictInt, Field(ge=1, le=MAX_KEY_IN_FLIGHT), INTEGRAL]


def _clean_name(value: str) -> str:
    name = value.strip()
    problem = "must not be blank" if not name else text_problem(name)
    if problem is not None:
        raise ContractError(f"The 'name' field {problem}.", param="name")
    return name


class UpstreamKeyCreate(BaseModel):
    """A new upstream key. It takes new tasks at once, on every replica."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"name": "org-key-2", "key": "sk-...", "weight": 1, "max_in_flight": 50}},
    )

    name: Name
    key: Annotated[
        StrictStr,
        Field(min_length=1, max_length=MAX_SECRET_CHARS, pattern=SECRET_PATTERN, json_schema_extra=_secret_schema),
    ]
    weight: Weight = Field(1, description="Share of new tasks, relative to the other keys' weights.")
    max_in_flight: Cap | None = Field(None, description="Tasks in flight on this key at most; null: no cap.")

    @field_validator("name")
    @classmethod
    def _storable_name(cls, value: str) -> str:
        return _clean_name(value)


class UpstreamKeyUpdate(BaseModel):
    """Fields given are changed; fields omitted stay as they are."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"weight": 5, "max_in_flight": None}})

    weight: Weight | SkipJsonSchema[None] = Field(None, description="Share of new tasks.")
    max_in_flight: Cap | None = Field(None, description="Tasks in flight on this key at most; null: no cap.")
    enabled: StrictBool | SkipJsonSchema[None] = Field(
        None,
        description="true: back in the rotation (from disabled, cooling or draining); false: disabled (stays so "
        "until enabled again; never re-probed).",
    )

    @field_validator("weight", "enabled", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must not be null (omit the field to keep it)")
        return value

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class UpstreamKeyOut(BaseModel):
    """An upstream key as listings show it: never the key itself."""

    object: Literal["upstream_key"] = "upstream_key"
    id: str
    name: str
    fingerprint: str = Field(description="The first characters of the key's keyed fingerprint, to tell keys apart.")
    status: UpstreamKeyStatus = Field(
        description="active; cooling (until cooling_until); disabled; draining (no new task, its tasks finish); "
        "retired (unused, except to poll tasks still open on it)."
    )
    status_reason: str | None
    weight: int
    max_in_flight: int | None = Field(description="null: no cap.")
    in_flight: int = Field(description="Tasks created with this key and not yet finished.")
    cooling_until: int | None = Field(description="Unix time the cooldown ends.")
    consecutive_errors: int
    created_at: int = Field(description="Unix time.")
    updated_at: int | None = Field(description="Unix time.")

    @classmethod
    def of(cls, key: UpstreamKey, now: dt.datetime) -> UpstreamKeyOut:
        status = effective_status(key, now)
        return cls(
            id=key.id,
            name=key.name,
            fingerprint=key.fingerprint[:FINGERPRINT_CHARS],
            status=status,
            status_reason=None if status == UpstreamKeyStatus.ACTIVE else key.status_reason,
            weight=key.weight,
            max_in_flight=key.max_in_flight,
            in_flight=key.in_flight,
            cooling_until=to_unix(key.cooling_until) if status == UpstreamKeyStatus.COOLING else None,
            consecutive_errors=key.consecutive_errors,
            created_at=to_unix(key.created_at) or 0,
            updated_at=to_unix(key.updated_at),
        )


class UpstreamKeyList(Page[UpstreamKeyOut]):
    """The upstream keys, oldest first."""


class RekeyReport(BaseModel):
    """What `secrets rekey` did: upstream keys re-encrypted now; tenant keys re-keyed on their next use."""

    secret_key_id: str = Field(description="Public id of the current GATEWAY_SECRET_KEY.")
    upstream_keys: int
    reencrypted: int
    already_current: int
    undecryptable: int = Field(description="Keys no configured secret opens (left as they are).")
    tenant_keys_pending: int = Field(description="Usable tenant keys still hashed under a previous secret.")
