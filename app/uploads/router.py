"""Reference-image upload, answered in the upload envelope (`success`, `message`, `data`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, UploadFile
from fastapi.responses import JSONResponse

from app.contract import ErrorEnvelope, UploadData, UploadResponse
from app.tenants.deps import TenantDep
from app.uploads.deps import UploadServiceDep
from app.upstream.base import UploadRefused

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post(
    "/images",
    response_model=UploadResponse,
    summary="Upload a reference image for image_urls",
    responses={400: {"model": UploadResponse}, 401: {"model": ErrorEnvelope}, 413: {"model": UploadResponse}},
)
async def upload_image(
    file: UploadFile, tenant: TenantDep, uploads: UploadServiceDep, purpose: Annotated[str, Form()] = "generation"
) -> UploadResponse | JSONResponse:
    content = await file.read()
    try:
        uploaded = await uploads.upload(file.filename or "image", content, (file.content_type or "").lower(), purpose)
    except UploadRefused as e:
        return JSONResponse({"success": False, "message": e.message}, status_code=e.status_code)
    return UploadResponse(
        success=True,
        data=UploadData(id=uploaded.id, url=uploaded.url, mime_type=uploaded.mime_type, size=uploaded.size),
    )
