"""Ops API for the upstream key pool (/admin/v1/upstream-keys). No answer carries a key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, status
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from app.audit.service import ACTOR_ADMIN_TOKEN
from app.contract import ErrorEnvelope
from app.core.deps import AdminDep
from app.core.pagination import DEFAULT_PAGE, PAGE_ERRORS, limit_query
from app.upstream.deps import UpstreamKeyServiceDep
from app.upstream.schemas import (
    KEY_CURSOR,
    RekeyReport,
    UpstreamKeyCreate,
    UpstreamKeyList,
    UpstreamKeyOut,
    UpstreamKeyUpdate,
)


class AllowEveryMethod(APIRoute):
    """A 405 whose `Allow` lists the methods of every route of the path in this router, not only this route's
    (Starlette answers an unsupported method with the first route that matched the path: PATCH for DELETE's)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            methods = set(self.methods)
            for route in router.routes:
                if isinstance(route, APIRoute) and route.path_format == self.path_format:
                    methods |= route.methods or set()
            raise HTTPException(status_code=405, headers={"Allow": ", ".join(sorted(methods))})
        await super().handle(scope, receive, send)


router = APIRouter(
    prefix="/admin/v1",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorEnvelope}},
    route_class=AllowEveryMethod,
)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorEnvelope, "description": "No such key (or a retired one)"}
}
KeyId = Annotated[str, Path(description="The key's id (`upk_...`).")]


@router.post(
    "/upstream-keys",
    response_model=UpstreamKeyOut,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorEnvelope, "description": "The key is already in the pool"}},
    summary="Add an upstream key to the pool",
)
async def create_upstream_key(body: UpstreamKeyCreate, keys: UpstreamKeyServiceDep) -> UpstreamKeyOut:
    """The key is stored encrypted and takes new tasks on every replica within a second; it is never shown again."""
    return await keys.create(body, actor=ACTOR_ADMIN_TOKEN)


@router.get(
    "/upstream-keys", response_model=UpstreamKeyList, responses=PAGE_ERRORS, summary="The upstream keys, oldest first"
)
async def list_upstream_keys(
    keys: UpstreamKeyServiceDep,
    limit: Annotated[int, limit_query()] = DEFAULT_PAGE,
    cursor: Annotated[str | None, KEY_CURSOR.query()] = None,
) -> UpstreamKeyList:
    return await keys.list(limit=limit, cursor=cursor)


@router.patch(
    "/upstream-keys/{key_id}",
    response_model=UpstreamKeyOut,
    responses=_NOT_FOUND,
    summary="Change a key's weight, cap, or whether it is enabled",
)
async def update_upstream_key(key_id: KeyId, body: UpstreamKeyUpdate, keys: UpstreamKeyServiceDep) -> UpstreamKeyOut:
    return await keys.update(key_id, body, actor=ACTOR_ADMIN_TOKEN)


@router.post(
    "/upstream-keys/{key_id}/drain",
    response_model=UpstreamKeyOut,
    responses=_NOT_FOUND,
    summary="Drain a key: no new task; its open tasks finish",
)
async def drain_upstream_key(key_id: KeyId, keys: UpstreamKeyServiceDep) -> UpstreamKeyOut:
    """Rotation: add the new key, drain the old one, retire it once its `in_flight` is 0."""
    return await keys.drain(key_id, actor=ACTOR_ADMIN_TOKEN)


@router.delete(
    "/upstream-keys/{key_id}",
    response_model=UpstreamKeyOut,
    responses=_NOT_FOUND,
    summary="Retire a key: used no more (except to poll tasks still open on it)",
)
async def retire_upstream_key(key_id: KeyId, keys: UpstreamKeyServiceDep) -> UpstreamKeyOut:
    return await keys.retire(key_id, actor=ACTOR_ADMIN_TOKEN)


@router.post(
    "/secrets/rekey",
    response_model=RekeyReport,
    summary="Re-encrypt every upstream key with the current GATEWAY_SECRET_KEY (after a rotation)",
)
async def rekey(keys: UpstreamKeyServiceDep) -> RekeyReport:
    """`seedream-gateway secrets rekey` over the API: with the former secret in GATEWAY_PREVIOUS_SECRET_KEYS, every
    upstream key is re-encrypted under the current one; tenant keys still hashed under a previous secret are counted
    (re-keyed on their next use)."""
    return await keys.rekey(actor=ACTOR_ADMIN_TOKEN)
