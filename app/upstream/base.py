"""The one small interface every upstream provider adapter implements, and what it returns."""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from app.contract import PublicTaskStatus
from app.core.errors import UpstreamUnavailable


@dataclass(frozen=True, slots=True)
class UpstreamTask:
    """A task as the upstream reported it, normalised to the contract's vocabulary."""

    id: str
    status: PublicTaskStatus
    progress: int
    urls: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    created_at: int | None = None
    completed_at: int | None = None
    expires_at: int | None = None


# An upload's image: its bytes, or a file holding them (read from its start), which is sent without being read whole.
UploadContent = bytes | BinaryIO


@dataclass(frozen=True, slots=True)
class UploadedFile:
    id: str
    url: str
    mime_type: str
    size: int


class UploadRefused(Exception):
    """The upstream refused an upload; `message` is the upstream's own text (`retry_after_s` from a 429's header)."""

    def __init__(self, status_code: int, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.retry_after_s = retry_after_s


class UpstreamServerError(UpstreamUnavailable):
    """The upstream answered 5xx (as opposed to not answering at all): counted against the key that got it."""

    def __init__(self, status: int) -> None:
        super().__init__(f"Upstream answered {status}")
        self.upstream_status = status


class UpstreamAdapter(Protocol):
    """Create and query generation tasks with one upstream API key.

    Errors: `UpstreamRejected` (4xx, passed through), `UpstreamCredentialsRefused` (401/403: the key itself),
    `UpstreamServerError` (5xx), `UpstreamUnavailable` (network, unusable answer), `UpstreamTimeout`.
    """

    async def create(self, api_key: str, body: dict[str, Any]) -> UpstreamTask: ...

    async def get(self, api_key: str, upstream_task_id: str) -> UpstreamTask: ...

    async def upload(
        self, api_key: str, filename: str, content: UploadContent, content_type: str, purpose: str
    ) -> UploadedFile: ...

    async def aclose(self) -> None: ...


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), or None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())
