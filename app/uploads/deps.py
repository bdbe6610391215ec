"""The upload service as a dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.uploads.service import UploadService


async def get_upload_service(request: Request) -> UploadService:
    service: UploadService = request.app.state.uploads
    return service


UploadServiceDep = Annotated[UploadService, Depends(get_upload_service)]
