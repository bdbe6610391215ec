"""The try-it page: type a prompt, pick a size and how many images, watch the progress arrive over the event stream,
see the images. Plain HTML, CSS and JavaScript shipped in the package (app/frontends/static): no CDN, no build step.

It is served at `/` for one tenant, the page's: the demo tenant in the zero-config demo, otherwise the tenant ops
name in GATEWAY_PAGE_TENANT (the page is off while that is empty). The page gets its token from `POST /page/token`,
which mints one as a team's backend would (`TenantService.mint_token`, with the tenant's newest key that has the
`mint` scope) for a new anonymous end user, bound to the page's own origin, with the page's limits per end user
(GATEWAY_PAGE_IMAGES_PER_DAY, GATEWAY_PAGE_SUBMITS_PER_MINUTE) inside the tenant's. Anyone who can load the page can
get such a token: that is what a demo is for, and why the page is off unless ops turn it on for a tenant.
"""

from __future__ import annotations

import json
import secrets
from functools import cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import HTMLResponse, Response

from app.contract import ErrorEnvelope
from app.core.config import Settings
from app.core.cors import normalize_origin
from app.core.errors import NotFound, Unauthorized
from app.tenants.deps import TenantServiceDep
from app.tenants.errors import Forbidden
from app.tenants.schemas import TokenCreate, TokenOut
from app.tenants.service import DEMO_KEY_FILE, TenantService
from app.tenants.tokens import DEFAULT_TTL_S

router = APIRouter(tags=["page"])

ASSETS = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}
# The page's own scripts and styles only; images from wherever the upstream keeps them; calls to this origin only.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' http: https: data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
_OFF = "The try-it page is off: ops turn it on for a tenant with GATEWAY_PAGE_TENANT."


@cache
def _asset(name: str) -> bytes:
    return resources.files("app.frontends").joinpath("static", name).read_bytes()


async def _page_tenant(request: Request) -> str | None:
    """The tenant whose page this is (id or name), or None when the page is off."""
    settings: Settings = request.app.state.kernel.settings
    if settings.page_tenant:
        return settings.page_tenant
    if not settings.zero_config:
        return None
    found: str | None = getattr(request.app.state, "page_tenant", None)
    if found is None:  # the demo tenant: the one whose key `serve` keeps in the data folder (app/cli/server.py)
        path = settings.data_dir / DEMO_KEY_FILE
        if not path.exists():
            return None
        tenants: TenantService = request.app.state.tenants
        try:
            who = await tenants.authenticate_key(f"Bearer {json.loads(path.read_text())['key']}", note_use=False)
        except Unauthorized:  # not this database's demo tenant
            return None
        found = request.app.state.page_tenant = who.tenant.id
    return found


@router.get(
    "/",
    response_class=HTMLResponse,
    responses={
        404: {
            "description": "The page is off (no GATEWAY_PAGE_TENANT)",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
        }
    },
    summary="The try-it page (zero-config demo, or the tenant ops name)",
)
async def page(request: Request) -> Response:
    if await _page_tenant(request) is None:
        raise NotFound(_OFF, code="page_off")
    return HTMLResponse(_asset("index.html"), headers=_PAGE_HEADERS)


def _serve_asset(name: str) -> None:
    """GET /page/<name>: one route per file (a `/page/{name}` route would also claim `/page/token`'s path)."""

    async def asset(request: Request) -> Response:
        if await _page_tenant(request) is None:
            raise NotFound(_OFF, code="page_off")
        return Response(_asset(name), media_type=ASSETS[name], headers=_PAGE_HEADERS)

    router.add_api_route(f"/page/{name}", asset, methods=["GET"], include_in_schema=False, name=f"page_{name}")


for _name in ASSETS:
    _serve_asset(_name)


@router.post(
    "/page/token",
    response_model=TokenOut,
    responses={
        403: {"model": ErrorEnvelope, "description": "The request's `Origin` is not one a token can be bound to"},
        404: {"model": ErrorEnvelope, "description": "The page is off (no GATEWAY_PAGE_TENANT)"},
        409: {"model": ErrorEnvelope, "description": "The page's tenant has no usable key with the `mint` scope"},
    },
    summary="A token for a new anonymous end user of the page's tenant (what the try-it page calls)",
)
async def page_token(
    request: Request,
    tenants: TenantServiceDep,
    origin: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> TokenOut:
    """Minted as `POST /v1/tokens` mints, with the page tenant's newest `mint` key: for a new end user (`page-...`),
    for the page's limits, and, asked from a page, for that page's origin only."""
    tenant = await _page_tenant(request)
    if tenant is None:
        raise NotFound(_OFF, code="page_off")
    origins = None
    if origin is not None:
        try:
            origins = [normalize_origin(origin)]
        except ValueError:
            raise Forbidden("A token is bound to the page's origin, and this one is not one.") from None
    settings: Settings = request.app.state.kernel.settings
    asked = TokenCreate(
        end_user=f"page-{secrets.token_hex(8)}",
        ttl_seconds=DEFAULT_TTL_S,
        images_per_day=settings.page_images_per_day,
        submits_per_minute=settings.page_submits_per_minute,
        origins=origins,
    )
    return tenants.mint_token(await tenants.minting_key(tenant), asked)
