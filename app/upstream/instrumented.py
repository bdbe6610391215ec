"""The adapter as every caller gets it: each call counted and timed by key, operation and outcome
(`gateway_upstream_calls_total`, `gateway_upstream_call_duration_seconds`) and, at log level debug, logged, whichever
adapter sits inside."""

from __future__ import annotations

import logging
import time
from typing import Any

from app.core import metrics
from app.core.errors import UpstreamCredentialsRefused, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from app.upstream.base import (
    UploadContent,
    UploadedFile,
    UploadRefused,
    UpstreamAdapter,
    UpstreamServerError,
    UpstreamTask,
)
from app.upstream.pool import UpstreamKeyPool

UNKNOWN_KEY = "unknown"
log = logging.getLogger(__name__)


def outcome_of(error: BaseException) -> str:
    """The error kind of a failed call: the status of a 4xx (429, 400...), 401 for a refused key, 5xx, timeout,
    unreachable."""
    if isinstance(error, UpstreamCredentialsRefused):
        return "401"
    if isinstance(error, UpstreamServerError):
        return "5xx"
    if isinstance(error, UpstreamRejected):
        return str(error.status_code)
    if isinstance(error, UploadRefused):
        return str(error.status_code)
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamUnavailable):
        return "unreachable"
    return "error"


class InstrumentedAdapter:
    def __init__(self, inner: UpstreamAdapter, pool: UpstreamKeyPool) -> None:
        self.inner = inner
        self._pool = pool
        self._key_ids: dict[str, str] = {}  # secret -> key id, rebuilt from the pool on a miss

    def _key_id(self, api_key: str) -> str:
        found = self._key_ids.get(api_key)
        if found is None:
            self._key_ids = {key.secret: key.id for key in self._pool.snapshot()}
            found = self._key_ids.get(api_key, UNKNOWN_KEY)
        return found

    async def _call(self, operation: str, api_key: str, call: Any) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await call
        except BaseException as e:
            outcome = outcome_of(e) if isinstance(e, Exception) else "cancelled"
            raise
        finally:
            seconds = time.perf_counter() - started
            key_id = self._key_id(api_key)
            metrics.observe_upstream(key_id, operation, outcome, seconds)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("upstream %s with key %s: %s in %.1f ms", operation, key_id, outcome, seconds * 1000)

    async def create(self, api_key: str, body: dict[str, Any]) -> UpstreamTask:
        result: UpstreamTask = await self._call("create", api_key, self.inner.create(api_key, body))
        return result

    async def get(self, api_key: str, upstream_task_id: str) -> UpstreamTask:
        result: UpstreamTask = await self._call("get", api_key, self.inner.get(api_key, upstream_task_id))
        return result

    async def upload(
        self, api_key: str, filename: str, content: UploadContent, content_type: str, purpose: str
    ) -> UploadedFile:
        call = self.inner.upload(api_key, filename, content, content_type, purpose)
        result: UploadedFile = await self._call("upload", api_key, call)
        return result

    async def aclose(self) -> None:
        await self.inner.aclose()
