"""The one small interface every upstream provider adapter implements, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from app.contract import PublicTaskStatus


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


@dataclass(frozen=True, slots=True)
class UploadedFile:
    id: str
    url: str
    mime_type: str
    size: int


class UploadRefused(Exception):
    """The upstream refused an upload; `message` is the upstream's own text."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


class UpstreamAdapter(Protocol):
    """Create and query generation tasks with one upstream API key.

    Errors: `UpstreamRejected` (4xx, passed through), `UpstreamUnavailable` (5xx, network), `UpstreamTimeout`.
    """

    async def create(self, api_key: str, body: dict[str, Any]) -> UpstreamTask: ...

    async def get(self, api_key: str, upstream_task_id: str) -> UpstreamTask: ...

    async def upload(
        self, api_key: str, filename: str, content: bytes, content_type: str, purpose: str
    ) -> UploadedFile: ...

    async def aclose(self) -> None: ...
