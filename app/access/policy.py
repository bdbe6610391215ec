"""The one access decision: who a tenant request is and what it may do.

Every path that answers a tenant request calls this module: the routes through their dependency
(app/quotas/deps.py `caller`) and the paths that answer before routing (app/tasks/fast_path.py) alike.

1. Identity: the `Authorization` header's tenant key, or an end-user token one of its keys minted
   (app/tenants/tokens.py) -> its tenant, scopes and, for a token, its end user (`TenantService.authenticate_key`; a
   key that is unknown, revoked, expired, rotated past its grace or of a disabled tenant is 401, and so are the
   tokens it minted, and a token that expired or was revoked). Warm keys come from memory, invalidated within the
   bound on every replica (app/tenants/auth_cache.py); a token is verified in memory and names its minting key.
2. `RULES`, in order, each raising its refusal: the scope the route needs (403; a token never mints), the origins a
   token was minted for (403 from a page of any other `Origin`), and any rule added later.
3. The per-minute rate windows the route counts (429 with `Retry-After`), last, so a refused request is not counted:
   a token's end user's own window first (when its token sets one), then the tenant's. The daily and monthly image
   quota, the end user's daily images included, is the submit's own admission (app/tasks/service.py), the same for
   every path.

`decide` runs all of it. `decide_from_memory` is the same decision when memory alone can make it: a known key or
token that every rule admits and that has no window to count. Otherwise it answers None and the caller must `decide`
(which then refuses, counts or looks the key up): a path that answers before routing keeps what it caches, never a
rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.context import set_tenant
from app.core.errors import GatewayError, RateLimited
from app.models import Tenant
from app.tenants.errors import Forbidden
from app.tenants.schemas import Scope

if TYPE_CHECKING:
    from app.quotas.rate_limits import Counted, RateLimitService
    from app.tenants.service import AuthenticatedKey, TenantService
    from app.tenants.tokens import EndUser


@dataclass(frozen=True)
class RateKind:
    """A per-minute window a route counts, and the tenant's limit for it (None: unlimited); and, when an end user's
    token may set one of its own, that end user's limit."""

    name: str
    limit_of: Callable[[Tenant], int | None]
    end_user_limit_of: Callable[[EndUser], int | None] | None = None


SUBMIT = RateKind("submit", lambda tenant: tenant.submit_rpm, lambda end_user: end_user.submits_per_minute)
QUERY = RateKind("query", lambda tenant: tenant.query_rpm)
# Uploads are counted in a window of their own, against the submit rate: a burst of uploads cannot starve submits.
UPLOAD = RateKind("upload", lambda tenant: tenant.submit_rpm)


@dataclass(frozen=True)
class Need:
    """What a route needs of its caller: a scope, and the rate window it counts (if any)."""

    scope: Scope
    rate: RateKind | None = None


# What each kind of tenant route needs; the routes' dependencies and the pre-routing paths name these.
SUBMITTING = Need("submit", SUBMIT)
QUERYING = Need("read", QUERY)
UPLOADING = Need("submit", UPLOAD)
READING = Need("read")
MINTING = Need("mint")


@dataclass(frozen=True)
class Decision:
    """An admitted caller, and the rate headers its answer carries (empty when nothing was counted)."""

    who: AuthenticatedKey
    rate_headers: dict[str, str]
    # The windows this request was counted in: given back if the request is refused after all (a 402 for the
    # quota, a 429 for the tasks in flight), as refused requests are not counted.
    counted: tuple[Counted, ...] = ()

    @property
    def tenant(self) -> Tenant:
        return self.who.tenant


# A rule: the identified caller, what the route needs, and the request's `Origin` header (None: not sent).
Rule = Callable[["AuthenticatedKey", Need, "str | None"], None]


def _scope(who: AuthenticatedKey, need: Need, origin: str | None) -> None:
    if need.scope == "mint" and who.end_user is not None:
        raise Forbidden("A token cannot mint tokens: mint with a tenant key, on your backend.")
    if need.scope not in who.scopes:
        what = "API key" if who.end_user is None else "token"
        raise Forbidden(f"This {what} does not have the '{need.scope}' scope.")


def _origin(who: AuthenticatedKey, need: Need, origin: str | None) -> None:
    """A token minted for some origins only is refused from a page of any other. (A request without `Origin` is not
    a browser's: the origins protect a token from other web pages, not from its holder.)"""
    allowed = who.end_user.origins if who.end_user is not None else None
    if allowed is not None and origin is not None and origin not in allowed:
        raise Forbidden(f"This token may not be used from the origin {origin!r}.", code="origin_not_allowed")


# Every rule on what an identified caller may do, in order; a rule raises its refusal. A rule added here applies to
# every path (tests/access/test_access_decision.py adds one and sees both the routed and the pre-routing path apply it).
RULES: list[Rule] = [_scope, _origin]


@dataclass(frozen=True, slots=True)
class Window:
    """A per-minute window to count: its kind, its limit, and the end user it is of (None: the tenant's)."""

    kind: str
    limit: int
    end_user: str | None = None


def _windows(who: AuthenticatedKey, need: Need, origin: str | None) -> list[Window]:
    """The rules, then the rate windows to count for this call, the end user's first (empty: nothing to count)."""
    for rule in RULES:
        rule(who, need, origin)
    rate = need.rate
    if rate is None:
        return []
    windows = []
    if who.end_user is not None and rate.end_user_limit_of is not None:
        own = rate.end_user_limit_of(who.end_user)
        if own is not None:
            windows.append(Window(rate.name, own, who.end_user.id))
    limit = rate.limit_of(who.tenant)
    if limit is not None:
        windows.append(Window(rate.name, limit))
    return windows


async def decide(
    tenants: TenantService,
    rate_limits: RateLimitService,
    authorization: str | None,
    need: Need,
    origin: str | None = None,
) -> Decision:
    """Identify the caller, apply every rule, count its rate windows: the admitted caller, or the refusal raised.
    With two windows (an end user's and its tenant's) the answer carries the headers of the one with less left."""
    who = await tenants.authenticate_key(authorization)
    set_tenant(who.tenant.id)  # for the request's log lines, refusals included
    headers: dict[str, str] = {}
    counted: list[Counted] = []
    try:
        for window in _windows(who, need, origin):
            answer = await rate_limits.enforce(
                who.tenant.id, window.kind, window.limit, end_user=window.end_user, counted=counted
            )
            if not headers or _remaining(answer) < _remaining(headers):
                headers = answer
    except RateLimited:  # refused by one window: the ones counted before it are given back
        await rate_limits.give_back(counted)
        raise
    return Decision(who, headers, tuple(counted))


def _remaining(headers: dict[str, str]) -> int:
    return int(headers.get("X-RateLimit-Remaining", 1 << 62))


def decide_from_memory(
    tenants: TenantService, authorization: str | None, need: Need, origin: str | None = None
) -> AuthenticatedKey | None:
    """`decide` when memory alone can make it (a known key or token, admitted by every rule, nothing to count); None
    when `decide` must (a cold or unknown key, a refusal to render, a window to count)."""
    who = tenants.known_key(authorization)
    if who is None:
        return None
    try:
        if _windows(who, need, origin):
            return None
    except GatewayError:
        return None
    set_tenant(who.tenant.id)
    return who
