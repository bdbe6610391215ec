"""Reference-image uploads: checked here, stored by the upstream."""

from __future__ import annotations

from app.contract import MAX_UPLOAD_BYTES, UPLOAD_MIME_TYPES, sniff_image_type
from app.upstream.base import UploadedFile, UploadRefused, UpstreamAdapter
from app.upstream.pool import UpstreamKeyPool


class UploadService:
    def __init__(self, adapter: UpstreamAdapter, pool: UpstreamKeyPool) -> None:
        self._adapter = adapter
        self._pool = pool

    async def upload(self, filename: str, content: bytes, content_type: str, purpose: str) -> UploadedFile:
        """Forward one image after the upstream's own checks (type and size), so refusals cost nothing."""
        # The bytes decide, as upstream: a PNG sent as application/octet-stream is still a PNG.
        content_type = sniff_image_type(content) or content_type
        if content_type not in UPLOAD_MIME_TYPES:
            raise UploadRefused(400, "Unsupported file type. Allowed: JPEG, PNG, WebP, GIF")
        if len(content) > MAX_UPLOAD_BYTES:
            raise UploadRefused(413, "Image too large. Maximum size is 10MB")
        if not content:
            raise UploadRefused(400, "The 'file' field is empty")
        key = self._pool.choose()
        return await self._adapter.upload(key.secret, filename, content, content_type, purpose)
