"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.deps import KernelDep
from app.quotas.deps import RateLimitsDep
from app.upstream.deps import UpstreamDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers and an upstream key is loaded")
async def readyz(kernel: KernelDep, upstream: UpstreamDep, rate_limits: RateLimitsDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with kernel.sessions() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:  # readiness reports, it does not raise
        checks["database"] = f"error: {type(e).__name__}"
    checks["upstream_keys"] = "ok" if len(upstream.pool) else "none configured"
    ready = all(v == "ok" for v in checks.values())
    # Redis holds only the rate windows, which fail open without it: a replica is still ready (pulling every replica
    # out of the load balancer because the shared Redis is away would turn unenforced rate limits into an outage).
    redis = await rate_limits.health()  # None when the windows live in the database (its check above covers them)
    if redis is not None:
        checks["redis"] = redis  # "ok" or "degraded: <reason> (rate limits not enforced)"
    status = "unavailable" if not ready else "ok" if redis in (None, "ok") else "degraded"
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)
