"""The result service for routers (`app.state.results`, set by the lifespan)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.results.service import ResultService


async def get_results(request: Request) -> ResultService:
    service: ResultService = request.app.state.results
    return service


ResultServiceDep = Annotated[ResultService, Depends(get_results)]
