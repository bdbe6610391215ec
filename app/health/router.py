"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.core.db.migrate import applied_revisions, head_revisions
from app.core.deps import KernelDep
from app.quotas.deps import RateLimitsDep
from app.upstream.deps import UpstreamDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers at the migrations' head and an upstream key can take tasks")
async def readyz(
    request: Request, kernel: KernelDep, upstream: UpstreamDep, rate_limits: RateLimitsDep
) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        current = await applied_revisions(kernel.engine)
        # A replica of an older (or newer) release than the schema is not ready: a rollout waits for the migration.
        checks["database"] = "ok" if current == head_revisions() else "not at the migrations' head"
    except Exception as e:  # readiness reports, it does not raise
        checks["database"] = f"error: {type(e).__name__}"
    # Usable: active, or cooling (it takes tasks again by itself); not when every key is disabled, draining or
    # retired, or there is none (ops must act).
    if not len(upstream.pool):
        checks["upstream_keys"] = "none configured"
    else:
        checks["upstream_keys"] = "ok" if upstream.pool.recovers_by_itself() else "no usable key"
    ready = all(v == "ok" for v in checks.values())
    # Redis holds only the rate windows, which fail open without it: a replica is still ready (pulling every replica
    # out of the load balancer because the shared Redis is away would turn unenforced rate limits into an outage).
    redis = await rate_limits.health()  # None when the windows live in the database (its check above covers them)
    if redis is not None:
        checks["redis"] = redis  # "ok" or "degraded: <reason> (rate limits not enforced)"
    # The result store likewise: tasks complete and settle without it, their copies wait (app/results).
    store = await request.app.state.results.health()  # None when results are not kept
    if store is not None:
        checks["result_store"] = store  # "ok" or "degraded: <reason> (copies wait)"
    status = "unavailable" if not ready else "ok" if redis in (None, "ok") and store in (None, "ok") else "degraded"
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)
