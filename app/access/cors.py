"""CORS per tenant: the browser origins whose pages may read a tenant's answers are the tenant's own
(`tenants.cors_origins`, set by ops), GATEWAY_CORS_ORIGINS being the default for tenants without any.

- An answer to a request with an `Origin` carries `Access-Control-Allow-Origin` when its caller's tenant allows that
  origin (the caller as memory knows it once the app has answered: app/tenants/service.py `origins_of`; a caller
  memory does not know, a refused key say, gets the default's).
- A preflight (`OPTIONS` with `Access-Control-Request-Method`) carries no credentials, so it cannot name a tenant: it
  is allowed for an origin that the default or any active tenant allows (kept in memory, read again when a tenant
  changes), and the real request's answer then decides by its own tenant.

The answer's CORS headers are data, never a refusal: a page on another origin is refused by the token it holds (a
token minted for some origins only is 403 from any other: the access rule in app/access/policy.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.admin_port import is_admin_path
from app.core.cors import (
    ALLOWED_HEADERS,
    ALLOWED_METHODS,
    ANY_ORIGIN,
    EXPOSED_HEADERS,
    PREFLIGHT_MAX_AGE_S,
    normalize_origin,
)

if TYPE_CHECKING:
    from starlette.datastructures import State

    from app.tenants.service import TenantService

_ALLOWED_HEADERS = frozenset(h.lower() for h in ALLOWED_HEADERS)
_SIMPLE_HEADERS = frozenset({"accept", "accept-language", "content-language"})  # always allowed in a preflight
_EXPOSED = ", ".join(EXPOSED_HEADERS)


def default_origins(configured: list[str]) -> frozenset[str]:
    """GATEWAY_CORS_ORIGINS as the middleware compares them (unreadable ones are left out)."""
    found = set()
    for origin in configured:
        try:
            found.add(normalize_origin(origin, allow_any=True))
        except ValueError:
            continue
    return frozenset(found)


def _allows(origins: frozenset[str] | list[str], origin: str) -> bool:
    return origin in origins or ANY_ORIGIN in origins


class TenantCors:
    def __init__(self, app: ASGIApp, state: State, default: list[str]) -> None:
        self.app = app
        self.state = state  # the app's state: its services exist once the lifespan has run
        self.default = default_origins(default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_admin_path(scope["path"]):  # the ops surface is never the tenants' CORS
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:  # most requests have no Origin: one pass, one comparison a header
            if name == b"origin":
                origin = value.decode("latin-1")
                break
        else:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            answer = await self._preflight(headers, origin)
            await answer(scope, receive, send)
            return
        authorization = headers.get("authorization")

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.add_vary_header("Origin")
                if self._allowed(origin, authorization):
                    headers["Access-Control-Allow-Origin"] = origin
                    headers["Access-Control-Expose-Headers"] = _EXPOSED
            await send(message)

        await self.app(scope, receive, with_cors)

    def _allowed(self, origin: str, authorization: str | None) -> bool:
        """Whether the caller's tenant (as memory knows it now) allows the page's origin."""
        tenants: TenantService | None = getattr(self.state, "tenants", None)
        own = None if tenants is None else tenants.origins_of(authorization)
        return _allows(self.default if own is None else own, origin)

    async def _preflight(self, asked: Headers, origin: str) -> PlainTextResponse:
        """Starlette's CORSMiddleware's answer, with the origins every tenant allows besides the default."""
        tenants: TenantService | None = getattr(self.state, "tenants", None)
        allowed = _allows(self.default, origin) or (
            tenants is not None and _allows(await tenants.browser_origins(), origin)
        )
        problems = []
        if not allowed:
            problems.append("origin")
        if asked.get("access-control-request-method") not in ALLOWED_METHODS:
            problems.append("method")
        wanted = {h.strip().lower() for h in asked.get("access-control-request-headers", "").split(",") if h.strip()}
        if not wanted <= _ALLOWED_HEADERS | _SIMPLE_HEADERS:
            problems.append("headers")
        headers = {
            "Vary": "Origin",
            "Access-Control-Allow-Methods": ", ".join(ALLOWED_METHODS),
            "Access-Control-Allow-Headers": ", ".join(ALLOWED_HEADERS),
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        }
        if allowed:
            headers["Access-Control-Allow-Origin"] = origin
        if problems:
            return PlainTextResponse(f"Disallowed CORS {', '.join(problems)}", status_code=400, headers=headers)
        return PlainTextResponse("OK", status_code=200, headers=headers)
