"""The one access decision: who a tenant request is and what it may do.

Every path that answers a tenant request calls this module: the routes through their dependency
(app/quotas/deps.py `caller`) and the paths that answer before routing (app/tasks/fast_path.py) alike.

1. Identity: the `Authorization` header's key -> its tenant and scopes (`TenantService.authenticate_key`; a key that is
   unknown, revoked, expired, rotated past its grace or of a disabled tenant is 401). Warm keys come from memory,
   invalidated within the bound on every replica (app/tenants/auth_cache.py).
2. `RULES`, in order, each raising its refusal: the scope the route needs (403), and any rule added later.
3. The per-minute rate window the route counts (429 with `Retry-After`), last, so a refused request is not counted.
   The daily and monthly image quota is the submit's own admission (app/tasks/service.py), the same for every path.

`decide` runs all of it. `decide_from_memory` is the same decision when memory alone can make it: a known key that
every rule admits and that has no window to count. Otherwise it answers None and the caller must `decide` (which
then refuses, counts or looks the key up): a path that answers before routing keeps what it caches, never a rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.context import set_tenant
from app.core.errors import GatewayError
from app.models import Tenant
from app.tenants.errors import Forbidden
from app.tenants.schemas import Scope

if TYPE_CHECKING:
    from app.quotas.rate_limits import RateLimitService
    from app.tenants.service import AuthenticatedKey, TenantService


@dataclass(frozen=True)
class RateKind:
    """A per-minute window a route counts, and the tenant's limit for it (None: unlimited)."""

    name: str
    limit_of: Callable[[Tenant], int | None]


SUBMIT = RateKind("submit", lambda tenant: tenant.submit_rpm)
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


@dataclass(frozen=True)
class Decision:
    """An admitted caller, and the rate headers its answer carries (empty when nothing was counted)."""

    who: AuthenticatedKey
    rate_headers: dict[str, str]

    @property
    def tenant(self) -> Tenant:
        return self.who.tenant


Rule = Callable[["AuthenticatedKey", Need], None]


def _scope(who: AuthenticatedKey, need: Need) -> None:
    if need.scope not in who.scopes:
        raise Forbidden(f"This API key does not have the '{need.scope}' scope.")


# Every rule on what an identified caller may do, in order; a rule raises its refusal. A rule added here applies to
# every path (tests/api/test_access_decision.py adds one and sees both the routed and the pre-routing path apply it).
RULES: list[Rule] = [_scope]


def _window(who: AuthenticatedKey, need: Need) -> tuple[str, int] | None:
    """The rules, then the rate window to count for this call (None: nothing to count)."""
    for rule in RULES:
        rule(who, need)
    if need.rate is None:
        return None
    limit = need.rate.limit_of(who.tenant)
    return None if limit is None else (need.rate.name, limit)


async def decide(
    tenants: TenantService, rate_limits: RateLimitService, authorization: str | None, need: Need
) -> Decision:
    """Identify the caller, apply every rule, count its rate window: the admitted caller, or the refusal raised."""
    who = await tenants.authenticate_key(authorization)
    set_tenant(who.tenant.id)  # for the request's log lines, refusals included
    window = _window(who, need)
    headers = await rate_limits.enforce(who.tenant.id, *window) if window is not None else {}
    return Decision(who, headers)


def decide_from_memory(tenants: TenantService, authorization: str | None, need: Need) -> AuthenticatedKey | None:
    """`decide` when memory alone can make it (a known key, admitted by every rule, nothing to count); None when
    `decide` must (a cold or unknown key, a refusal to render, a window to count)."""
    who = tenants.known_key(authorization)
    if who is None:
        return None
    try:
        if _window(who, need) is not None:
            return None
    except GatewayError:
        return None
    set_tenant(who.tenant.id)
    return who
