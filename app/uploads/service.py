"""Reference-image uploads: checked here, stored by the upstream."""

from __future__ import annotations

from app.contract import MAX_UPLOAD_BYTES, UPLOAD_MIME_TYPES, sniff_image_type
from app.core.errors import UpstreamCredentialsRefused
from app.upstream.base import UploadedFile, UploadRefused, UpstreamAdapter
from app.upstream.pool import UpstreamKeyPool

TOO_LARGE = "Image too large. Maximum size is 10MB"
EMPTY = "The 'file' field is empty: send a JPEG, PNG, WebP or GIF image"
NOT_AN_IMAGE = "Unsupported file type. Allowed: JPEG, PNG, WebP, GIF (the file's bytes decide, not its declared type)"


class UploadService:
    def __init__(self, adapter: UpstreamAdapter, pool: UpstreamKeyPool) -> None:
        self._adapter = adapter
        self._pool = pool

    async def upload(self, filename: str, content: bytes, purpose: str) -> UploadedFile:
        """Forward one image after the upstream's own checks (size and type), so refusals cost nothing.

        The bytes decide, as upstream: a PNG sent as application/octet-stream is a PNG, and a page of HTML sent as
        image/png is no image at all (refused here, never sent). It goes upstream with the type its bytes have.
        """
        if len(content) > MAX_UPLOAD_BYTES:
            raise UploadRefused(413, TOO_LARGE)
        if not content:
            raise UploadRefused(400, EMPTY)
        content_type = sniff_image_type(content)
        if content_type not in UPLOAD_MIME_TYPES:
            raise UploadRefused(400, NOT_AN_IMAGE)
        tried: set[str] = set()
        while True:  # a key the upstream refuses (401/403) or rate-limits (429) is marked, and the next one tried
            key = self._pool.choose(exclude=tried)  # 503 upstream_unavailable when none is left
            tried.add(key.id)
            try:
                return await self._adapter.upload(key.secret, filename, content, content_type, purpose)
            except UpstreamCredentialsRefused as e:
                await self._pool.report_failure(key, e, call="upload")
            except UploadRefused as e:
                if e.status_code != 429:
                    raise
                await self._pool.cool(key, e.retry_after_s, "rate limited by the upstream (429 on an upload)")
