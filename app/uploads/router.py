"""Reference-image upload, answered in the upload envelope (`success`, `message`, `data`).

Nothing of the body is read before the caller is known: the route declares no body parameter (FastAPI would read
and parse the body before solving the dependencies), so its one dependency authenticates the key, checks its scope
and counts its rate from the headers first. Then the upload takes one of the tenant's slots (UploadService.slot),
and only then is the body read, with the upload limit and the minimum pace (app/core/body_limit.py), by Starlette's
multipart parser, which spools the file to disk: the service sends it upstream from there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from app.contract import MAX_UPLOAD_BYTES, ErrorEnvelope, UploadData, UploadResponse
from app.core.body_limit import (
    DEFAULT_PACE,
    TOO_SLOW_MESSAGE,
    UPLOAD_BODY_LIMIT,
    UPLOAD_TOO_LARGE_MESSAGE,
    BodyTooLarge,
    BodyTooSlow,
    paced,
)
from app.core.errors import RateLimited
from app.quotas.deps import UploadCaller
from app.uploads.deps import UploadServiceDep
from app.upstream.base import UploadRefused

# The upstream document's spelling and order; the same four types as UPLOAD_MIME_TYPES.
ACCEPTED_TYPES = "image/jpeg, image/png, image/webp, image/gif"
FILE_DESCRIPTION = (
    f"A JPEG, PNG, WebP or GIF image, 1 byte to {MAX_UPLOAD_BYTES // (1024 * 1024)} MB; its content decides its "
    "type, whatever the part's Content-Type says (an empty file is refused with 400)."
)
# The body as FastAPI would document `file: UploadFile = File(...)` and `purpose: str = Form("generation")`.
REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "title": "UploadImageBody",
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "title": "File",
                        "contentMediaType": "application/octet-stream",
                        "minLength": 1,
                        "description": FILE_DESCRIPTION,
                    },
                    "purpose": {"type": "string", "title": "Purpose", "default": "generation"},
                },
            },
            # The accepted types, as the upstream's document states them; the file's bytes decide (magic numbers).
            "encoding": {"file": {"contentType": ACCEPTED_TYPES}},
        }
    },
}
NOT_MULTIPART = "send the image as multipart/form-data field 'file'."


class NoAnswer(Response):
    """Nothing sent: the client went away mid-body (the access line says 499, app/core/observe.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


def refusal(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "message": message}, status_code=status_code, headers=headers)


class UploadRoute(APIRoute):
    """The per-minute rate's 429 answers in the upload envelope too. A missing or wrong key stays the 401 error
    envelope, as upstream."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def upload_route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RateLimited as e:
                return refusal(e.status_code, e.message, e.headers)

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
        408: {
            "model": UploadResponse,
            "description": (
                f"The body arrived slower than {int(DEFAULT_PACE.min_rate)} bytes/s on average (after the first "
                f"{DEFAULT_PACE.grace_s:g} s); the connection is closed"
            ),
        },
        413: {"model": UploadResponse, "description": "Larger than 10 MB"},
        429: {
            "model": UploadResponse,
            "description": (
                "Too many uploads: the tenant's per-minute rate (uploads count against `submit_rpm`, in a window "
                "of their own), or the uploads in progress, the tenant's or the gateway's"
            ),
            "headers": {"Retry-After": _RETRY_AFTER},
        },
    },
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def upload_image(request: Request, caller: UploadCaller, uploads: UploadServiceDep) -> UploadResponse | Response:
    rate_headers: dict[str, str] = getattr(request.state, "rate_headers", None) or {}
    try:
        with uploads.slot(caller.tenant.id):
            async with received_form(request) as form:
                file, purpose = _fields(form)
                uploaded = await uploads.upload(file.filename or "image", file.file, purpose)
    except UploadRefused as e:
        headers = dict(rate_headers)
        if e.retry_after_s is not None:
            headers["retry-after"] = str(max(1, round(e.retry_after_s)))
        return refusal(e.status_code, e.message, headers)
    except BodyTooSlow:
        message = TOO_SLOW_MESSAGE.format(rate=int(DEFAULT_PACE.min_rate))
        return refusal(408, message, {**rate_headers, "connection": "close"})
    except ClientDisconnect:
        return NoAnswer()
    return UploadResponse(
        success=True,
        data=UploadData(id=uploaded.id, url=uploaded.url, mime_type=uploaded.mime_type, size=uploaded.size),
    )


@asynccontextmanager
async def received_form(request: Request) -> AsyncIterator[FormData]:
    """The multipart body, read now through `paced` with the upload limit; its files are closed (and their spooled
    copies deleted) on leaving. UploadRefused (413, 400), BodyTooSlow or ClientDisconnect when it cannot be read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > UPLOAD_BODY_LIMIT:
        raise UploadRefused(413, UPLOAD_TOO_LARGE_MESSAGE)
    reading = Request(request.scope, paced(request.receive, UPLOAD_BODY_LIMIT))
    try:
        # Two files at most, so that a second `file` is refused by name (_fields) rather than by count.
        form = await reading.form(max_files=2, max_fields=8)
    except BodyTooLarge:
        raise UploadRefused(413, UPLOAD_TOO_LARGE_MESSAGE) from None
    except HTTPException as e:  # raised by the parser: not multipart, or malformed
        detail = e.detail if isinstance(e.detail, str) else "Invalid multipart body"
        raise UploadRefused(400, f"{detail.rstrip('.')}: {NOT_MULTIPART}") from None
    try:
        yield form
    finally:
        await form.close()


def _fields(form: FormData) -> tuple[UploadFile, str]:
    """The one file and the purpose; UploadRefused (400) otherwise."""
    for name in ("file", "purpose"):
        if len(form.getlist(name)) > 1:  # the last one would win silently: refuse instead
            raise UploadRefused(400, f"The '{name}' field must be sent once (one image per upload).")
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise UploadRefused(400, f"The 'file' field is required: {NOT_MULTIPART}")
    purpose = form.get("purpose", "generation")
    if not isinstance(purpose, str):
        raise UploadRefused(400, "The 'purpose' field must be text, not a file.")
    return file, purpose
