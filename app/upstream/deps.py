"""The upstream feature (adapter and key pool) and its ops service, as dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.upstream.feature import Upstream
from app.upstream.service import UpstreamKeyService


async def get_upstream(request: Request) -> Upstream:
    upstream: Upstream = request.app.state.upstream
    return upstream


UpstreamDep = Annotated[Upstream, Depends(get_upstream)]


async def get_upstream_keys(request: Request) -> UpstreamKeyService:
    upstream: Upstream = request.app.state.upstream
    return upstream.keys


UpstreamKeyServiceDep = Annotated[UpstreamKeyService, Depends(get_upstream_keys)]
