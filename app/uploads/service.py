"""Reference-image uploads: checked here, stored by the upstream; few at once per process, fewer per tenant."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import BinaryIO

from app.contract import MAX_UPLOAD_BYTES, UPLOAD_MIME_TYPES, sniff_image_type
from app.core.errors import UpstreamCredentialsRefused
from app.upstream.base import UploadedFile, UploadRefused, UpstreamAdapter
from app.upstream.service import PoolService

TOO_LARGE = "Image too large. Maximum size is 10MB"
EMPTY = "The 'file' field is empty: send a JPEG, PNG, WebP or GIF image"
NOT_AN_IMAGE = "Unsupported file type. Allowed: JPEG, PNG, WebP, GIF (the file's bytes decide, not its declared type)"
BUSY = "Too many uploads in progress; retry shortly."
DEFAULT_MAX_IN_FLIGHT = 8
BUSY_RETRY_AFTER_S = 1
_SNIFF_BYTES = 16  # enough for every magic number sniff_image_type knows


def per_tenant_bound(max_in_flight: int) -> int:
    """A tenant's share of a process's upload slots: a quarter, so that one tenant (or one stolen key) trickling
    bodies leaves three quarters to everyone else."""
    return max(1, max_in_flight // 4)


class UploadSlots:
    """Uploads in flight in this process: at most `total`, of which at most `per_tenant` by one tenant. One event
    loop per process: plain counters need no lock."""

    def __init__(self, total: int, per_tenant: int) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self.in_flight = 0
        self.by_tenant: dict[str, int] = {}

    @contextmanager
    def take(self, tenant_id: str) -> Iterator[None]:
        """One slot for the block; UploadRefused (429, Retry-After) when the tenant's or the process's are taken."""
        held = self.by_tenant.get(tenant_id, 0)
        if held >= self.per_tenant or self.in_flight >= self.total:
            raise UploadRefused(429, BUSY, retry_after_s=BUSY_RETRY_AFTER_S)
        self.by_tenant[tenant_id] = held + 1
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            left = self.by_tenant[tenant_id] - 1
            if left:
                self.by_tenant[tenant_id] = left
            else:
                del self.by_tenant[tenant_id]


class UploadService:
    def __init__(
        self, adapter: UpstreamAdapter, pool: PoolService, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    ) -> None:
        self._adapter = adapter
        self._pool = pool
        self.slots = UploadSlots(max_in_flight, per_tenant_bound(max_in_flight))

    def slot(self, tenant_id: str) -> AbstractContextManager[None]:
        """A slot for one upload by this tenant, taken before its body is read (see UploadSlots.take)."""
        return self.slots.take(tenant_id)

    async def upload(self, filename: str, file: BinaryIO, purpose: str) -> UploadedFile:
        """Forward one image after the upstream's own checks (size and type), so refusals cost nothing.

        `file` holds the image (an upload spooled to disk by the multipart parser): it is sent from there, never
        read whole into memory. The bytes decide, as upstream: a PNG sent as application/octet-stream is a PNG, and
        a page of HTML sent as image/png is no image at all (refused here, never sent). It goes upstream with the
        type its bytes have.
        """
        size = file.seek(0, os.SEEK_END)
        if size > MAX_UPLOAD_BYTES:
            raise UploadRefused(413, TOO_LARGE)
        if not size:
            raise UploadRefused(400, EMPTY)
        file.seek(0)
        content_type = sniff_image_type(file.read(_SNIFF_BYTES))
        if content_type not in UPLOAD_MIME_TYPES:
            raise UploadRefused(400, NOT_AN_IMAGE)
        tried: set[str] = set()
        while True:  # a key the upstream refuses (401/403) or rate-limits (429) is marked, and the next one tried
            key = self._pool.pool.choose(exclude=tried)  # 503 upstream_unavailable when none is left
            tried.add(key.id)
            try:
                return await self._adapter.upload(key.secret, filename, file, content_type, purpose)
            except UpstreamCredentialsRefused as e:
                await self._pool.report_failure(key, e, call="upload")
            except UploadRefused as e:
                if e.status_code != 429:
                    raise
                await self._pool.cool(key, e.retry_after_s, "rate limited by the upstream (429 on an upload)")
