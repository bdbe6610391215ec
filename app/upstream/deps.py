"""The upstream feature (adapter and key pool) as a dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.upstream.feature import Upstream


async def get_upstream(request: Request) -> Upstream:
    upstream: Upstream = request.app.state.upstream
    return upstream


UpstreamDep = Annotated[Upstream, Depends(get_upstream)]
