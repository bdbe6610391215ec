"""A kept image at its link: `GET /v1/results/{task_id}/{index}`.

A signed link (`expires`, `sig`: what the task's status answer hands out) opens the image for whoever holds it
until it expires. Without a valid one, the tenant's own API key does (`read` scope; another tenant's image is 404,
as its task is), and an end-user token for that end user's own tasks' images only.
The local store's image is streamed from disk; the S3 store's is a redirect to a presigned URL.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Security
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from app.access import policy
from app.access.policy import READING
from app.contract import ErrorEnvelope
from app.results.deps import ResultServiceDep
from app.results.service import link_refused
from app.tenants.deps import tenant_bearer

router = APIRouter(prefix="/v1", tags=["results"])


@router.get(
    "/results/{task_id}/{index}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}, "description": "The image"},
        302: {"description": "The S3 store's presigned URL of the image"},
        401: {
            "model": ErrorEnvelope,
            "description": "Neither a valid signature (unsigned, tampered, expired) nor a key",
        },
        403: {"model": ErrorEnvelope, "description": "The API key lacks the `read` scope"},
        404: {"model": ErrorEnvelope, "description": "No such image kept (also another tenant's)"},
    },
    summary="A kept result image (gateway extension: the links in a task's result)",
)
async def get_result_image(
    request: Request,
    task_id: str,
    index: int,
    results: ResultServiceDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(tenant_bearer)],
    expires: Annotated[str | None, Query(max_length=12, description="The link's expiry (unix time).")] = None,
    sig: Annotated[str | None, Query(max_length=64, description="The link's signature.")] = None,
) -> Response:
    problem = results.link_problem(task_id, index, expires, sig)
    tenant_id = end_user = None
    if problem is not None:
        authorization = request.headers.get("authorization")
        if authorization is None and (expires is not None or sig is not None):
            raise link_refused(problem)
        state = request.app.state
        decision = await policy.decide(
            state.tenants, state.rate_limits, authorization, READING, request.headers.get("origin")
        )
        who = decision.who
        tenant_id, end_user = who.tenant.id, who.end_user.id if who.end_user is not None else None
    served = await results.serve(task_id, index, tenant_id=tenant_id, end_user=end_user)
    if served.redirect is not None:
        return RedirectResponse(served.redirect, status_code=302, headers={"Cache-Control": "no-store"})
    assert served.path is not None
    cache = f"private, max-age={min(served.max_age_s, 3600)}" if tenant_id is None else "private, no-cache"
    return FileResponse(served.path, media_type=served.content_type, headers={"Cache-Control": cache})
