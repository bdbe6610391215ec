"""End-user tokens: what a team's backend mints with its tenant key for one of its end users, for a browser to hold.

A token is self-contained and signed (`KeyMaterial.sign_token`, app/core/security.py: HMAC-SHA256 under a key derived
from GATEWAY_SECRET_KEY). Its claims: the tenant, the minting key, the end user (the team's own id for the person)
with its limits and the origins it may be used from, the scopes, when it was issued and when it expires. Checking the
signature needs no database read; whether the token is still good is decided in memory too (`TenantService`'s
identity step): its minting key still usable (a revoked, expired or rotated-past-grace key, or a disabled tenant,
refuses its tokens), and issued after the tenant's `tokens_valid_after`.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from app.core.security import KeyMaterial

MAX_TTL_S = 3600
DEFAULT_TTL_S = 900
MAX_ORIGINS = 10
DEFAULT_SIZE = 10_000  # verified tokens kept in memory per process


@dataclass(frozen=True, slots=True)
class EndUser:
    """One end user of a tenant, as its token names it: its id and its own limits (None: only the tenant's)."""

    id: str
    images_per_day: int | None = None
    submits_per_minute: int | None = None
    origins: frozenset[str] | None = None  # the only `Origin`s the token may come from (None: any)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a token says, signature checked."""

    tenant_id: str
    key_id: str  # the minting key
    end_user: EndUser
    scopes: frozenset[str]
    issued_at_ms: int  # unix milliseconds
    expires_at: int  # unix seconds

    def encode(self) -> bytes:
        """The compact JSON the token signs."""
        body: dict[str, Any] = {
            "t": self.tenant_id,
            "k": self.key_id,
            "u": self.end_user.id,
            "s": sorted(self.scopes),
            "i": self.issued_at_ms,
            "e": self.expires_at,
        }
        if self.end_user.images_per_day is not None:
            body["d"] = self.end_user.images_per_day
        if self.end_user.submits_per_minute is not None:
            body["m"] = self.end_user.submits_per_minute
        if self.end_user.origins is not None:
            body["o"] = sorted(self.end_user.origins)
        return orjson.dumps(body)

    @classmethod
    def decode(cls, body: bytes) -> TokenClaims | None:
        """The claims of a signed body; None when it is not what `encode` makes (a token of another version)."""
        try:
            data = orjson.loads(body)
            origins = data.get("o")
            claims = cls(
                tenant_id=_text(data["t"]),
                key_id=_text(data["k"]),
                end_user=EndUser(
                    id=_text(data["u"]),
                    images_per_day=_count(data.get("d")),
                    submits_per_minute=_count(data.get("m")),
                    origins=None if origins is None else frozenset(_text(o) for o in origins),
                ),
                scopes=frozenset(_text(s) for s in data["s"]),
                issued_at_ms=_integer(data["i"]),
                expires_at=_integer(data["e"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return claims


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("not an integer")
    return value


def _count(value: object) -> int | None:
    return None if value is None else _integer(value)


def unix_ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def issued_after(claims: TokenClaims, valid_after: dt.datetime | None) -> bool:
    """Whether a token was issued after its tenant's `tokens_valid_after` (a token of that very millisecond is not:
    revocation errs on the side of refusing)."""
    return valid_after is None or claims.issued_at_ms > unix_ms(valid_after)


class VerifiedTokens:
    """Tokens whose signature was checked, with their claims (bounded, least recently used out): a warm token costs
    a dictionary lookup. Only what the signature proves is kept; whether the token is still good is decided on every
    use."""

    def __init__(self, keys: KeyMaterial, size: int = DEFAULT_SIZE) -> None:
        self._keys = keys
        self._size = size
        self._claims: OrderedDict[str, TokenClaims] = OrderedDict()

    def claims(self, token: str) -> TokenClaims | None:
        """The token's claims; None when it is not a token the gateway signed."""
        found = self._claims.get(token)
        if found is not None:
            self._claims.move_to_end(token)
            return found
        body = self._keys.token_body(token)
        found = None if body is None else TokenClaims.decode(body)
        if found is not None:
            self._claims[token] = found
            if len(self._claims) > self._size:
                self._claims.popitem(last=False)
        return found
