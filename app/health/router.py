"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.deps import KernelDep
from app.upstream.deps import UpstreamDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers and an upstream key is loaded")
async def readyz(kernel: KernelDep, upstream: UpstreamDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with kernel.sessions() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:  # readiness reports, it does not raise
        checks["database"] = f"error: {type(e).__name__}"
    checks["upstream_keys"] = "ok" if len(upstream.pool) else "none configured"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )
