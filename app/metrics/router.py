"""GET /metrics: open to loopback callers, otherwise `Authorization: Bearer <GATEWAY_METRICS_TOKEN>`; with no token
set, refused (403) to any other caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.core import metrics
from app.core.errors import GatewayError, Unauthorized
from app.core.net import is_loopback
from app.core.security import bearer_token, constant_time_equals
from app.metrics.gauges import Gauges

router = APIRouter(tags=["health"])


class MetricsForbidden(GatewayError):
    status_code = 403
    code = "forbidden"
    type = "permission_error"


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(
    request: Request, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Response:
    gauges: Gauges = request.app.state.gauges
    client = request.client.host if request.client is not None else None
    if not is_loopback(client):
        token = gauges.settings.metrics_token.get_secret_value()
        if not token:
            raise MetricsForbidden("/metrics is open to loopback callers only: set GATEWAY_METRICS_TOKEN.")
        given = bearer_token(authorization)
        if given is None or not constant_time_equals(given, token):
            raise Unauthorized("Invalid metrics token")
    await gauges.refresh()
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
