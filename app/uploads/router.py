"""Reference-image upload, answered in the upload envelope (`success`, `message`, `data`)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from app.contract import MAX_UPLOAD_BYTES, ErrorEnvelope, UploadData, UploadResponse
from app.core.errors import RateLimited
from app.quotas.deps import UploadCaller
from app.uploads.deps import UploadServiceDep
from app.upstream.base import UploadRefused

# The upstream document's spelling and order; the same four types as UPLOAD_MIME_TYPES.
ACCEPTED_TYPES = "image/jpeg, image/png, image/webp, image/gif"


def refusal(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "message": message}, status_code=status_code, headers=headers)


class UploadRoute(APIRoute):
    """The route's own refusals answer in the upload envelope: the per-minute rate's 429, and a multipart body that
    cannot be parsed (400). A missing or wrong key stays the 401 error envelope, as upstream."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def upload_route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RateLimited as e:
                return refusal(e.status_code, e.message, e.headers)
            except HTTPException as e:  # raised by the body parser: not multipart, or malformed
                if e.status_code != 400:
                    raise
                detail = e.detail if isinstance(e.detail, str) else "Invalid multipart body"
                return refusal(400, f"{detail.rstrip('.')}: send the image as multipart/form-data field 'file'.")

        return upload_route_handler


router = APIRouter(prefix="/v1/uploads", tags=["uploads"], route_class=UploadRoute)

_RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}}


@router.post(
    "/images",
    response_model=UploadResponse,
    summary="Upload a reference image for image_urls",
    responses={
        400: {"model": UploadResponse, "description": "Empty file, or not a JPEG, PNG, WebP or GIF image"},
        401: {"model": ErrorEnvelope, "description": "Missing or invalid API key"},
        403: {"model": ErrorEnvelope, "description": "The API key lacks the `submit` scope"},
        413: {"model": UploadResponse, "description": "Larger than 10 MB"},
        429: {
            "model": UploadResponse,
            "description": (
                "Too many uploads: the tenant's per-minute rate (uploads count against `submit_rpm`, in a window "
                "of their own) or the gateway's concurrent uploads"
            ),
            "headers": {"Retry-After": _RETRY_AFTER},
        },
    },
    # The accepted types, as the upstream's document states them; the file's bytes decide (magic numbers).
    openapi_extra={
        "requestBody": {"content": {"multipart/form-data": {"encoding": {"file": {"contentType": ACCEPTED_TYPES}}}}}
    },
)
async def upload_image(
    request: Request,
    file: Annotated[
        UploadFile,
        File(
            description=(
                f"A JPEG, PNG, WebP or GIF image, 1 byte to {MAX_UPLOAD_BYTES // (1024 * 1024)} MB; its content "
                "decides its type, whatever the part's Content-Type says (an empty file is refused with 400)."
            ),
            json_schema_extra={"minLength": 1},
        ),
    ],
    tenant: UploadCaller,
    uploads: UploadServiceDep,
    purpose: Annotated[str, Form()] = "generation",
) -> UploadResponse | JSONResponse:
    form = await request.form()  # already parsed (and cached) for the parameters above
    for name in ("file", "purpose"):
        if len(form.getlist(name)) > 1:  # the last one would win silently: refuse instead
            return refusal(400, f"The '{name}' field must be sent once (one image per upload).")
    content = await file.read()
    try:
        uploaded = await uploads.upload(file.filename or "image", content, purpose)
    except UploadRefused as e:
        return refusal(e.status_code, e.message, getattr(request.state, "rate_headers", None))
    return UploadResponse(
        success=True,
        data=UploadData(id=uploaded.id, url=uploaded.url, mime_type=uploaded.mime_type, size=uploaded.size),
    )
