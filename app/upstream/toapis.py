"""Adapter for the ToAPIs upstream (async tasks: create, then poll)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import httpx
import orjson
from aiohttp import ClientSession, ClientTimeout
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

from app.contract import UPSTREAM_STATUS_MAP, PublicTaskStatus, TaskStatus
from app.core.clock import utcnow
from app.core.context import REQUEST_ID_HEADER, current_request_id, new_request_id
from app.core.errors import UpstreamCredentialsRefused, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from app.upstream.base import (
    UploadContent,
    UploadedFile,
    UploadRefused,
    UpstreamServerError,
    UpstreamTask,
    parse_retry_after,
)

log = logging.getLogger(__name__)


class Answer(NamedTuple):
    """An upstream's answer to a create or status call, read whole."""

    status_code: int
    headers: Mapping[str, str]  # case-insensitive: httpx's or aiohttp's
    content: bytes


# Headers of a 4xx worth passing on to the caller (rate-limit hints in particular).
_PASSTHROUGH_HEADERS = (
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-category",
)


def build_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    """The upstream's connection pool. The aiohttp transport: 5x httpx's default on this path (see README)."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return AiohttpTransport(limits=limits)


def build_http_client(
    base_url: str,
    *,
    user_agent: str,
    timeout_s: float,
    connect_timeout_s: float,
    transport: httpx.AsyncBaseTransport,
) -> httpx.AsyncClient:
    """One client per upstream, over `transport` (build_transport, or a test's)."""
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        transport=transport,
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s, pool=connect_timeout_s),
        headers={"User-Agent": user_agent, "Accept": "application/json"},
    )


def parse_task(payload: dict[str, Any]) -> UpstreamTask:
    """Read a task object in any of the documented variants."""
    task_id = payload.get("id") or payload.get("task_id")
    if not isinstance(task_id, str) or not task_id or "\x00" in task_id or len(task_id) > 128:
        raise UpstreamUnavailable("Upstream answered without a usable task id")
    raw_status = str(payload.get("status") or "queued").lower()
    status: PublicTaskStatus = UPSTREAM_STATUS_MAP.get(raw_status, TaskStatus.IN_PROGRESS)
    urls = _result_urls(payload)
    progress = _progress(payload.get("progress"), status)
    error = payload.get("error") if isinstance(payload.get("error"), dict) else None
    return UpstreamTask(
        id=task_id,
        status=status,
        progress=progress,
        urls=urls,
        error_code=str(error["code"]) if error and error.get("code") is not None else None,
        error_message=str(error.get("message")) if error and error.get("message") else None,
        created_at=_int_or_none(payload.get("created_at")),
        completed_at=_int_or_none(payload.get("completed_at")),
        expires_at=_int_or_none(payload.get("expires_at")),
    )


def _result_urls(payload: dict[str, Any]) -> list[str]:
    result = payload.get("result")
    if isinstance(result, dict) and isinstance(result.get("data"), list):
        urls = [item["url"] for item in result["data"] if isinstance(item, dict) and item.get("url")]
        if urls:
            return urls
    images = payload.get("images")
    if isinstance(images, list):
        urls = [item["url"] for item in images if isinstance(item, dict) and item.get("url")]
        if urls:
            return urls
    url = payload.get("url")
    return [url] if isinstance(url, str) and url else []


def _progress(value: Any, status: PublicTaskStatus) -> int:
    if status == TaskStatus.COMPLETED:
        return 100
    if isinstance(value, str):
        value = value.rstrip("%").strip()
    try:
        return max(0, min(100, int(float(value))))
    except (TypeError, ValueError, OverflowError):
        return 0


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _credentials_refused(status: int, method: str, path: str) -> UpstreamCredentialsRefused:
    """The key itself was refused. Logged as a warning here; the key pool raises the alert when it disables a key
    (one ERROR line per key, not one per call)."""
    log.warning("upstream refused an upstream key with %s on %s %s", status, method, path)
    return UpstreamCredentialsRefused(f"The upstream refused the gateway's credentials ({status})")


def _length(content: UploadContent) -> int:
    if isinstance(content, bytes):
        return len(content)
    return content.seek(0, os.SEEK_END)


def _headers(api_key: str) -> dict[str, str]:
    """The key, and the request id of the request this call serves (a new one for a background call), so that the
    upstream's logs and the gateway's meet."""
    return {"Authorization": f"Bearer {api_key}", REQUEST_ID_HEADER: current_request_id() or new_request_id()}


class ToAPIsAdapter:
    """Speaks /v1/images/generations and /v1/uploads/images to a ToAPIs-compatible upstream.

    `client` is built over `transport` (build_http_client). Create and status calls, the hot path, hand a request
    straight to the transport: the client's own request machinery (URL merging, cookies, auth and redirect hooks,
    none of which these calls use) cost as much CPU as the transport's whole exchange (`bench/upstream_transport.py`).
    The request is what the client would send: its base URL, default headers and timeouts. The transport is looked
    up on each call, so an instrumentation that wraps it in place (tracing) sees these calls too. Uploads (multipart,
    rare) go through the client; a file (an upload spooled to disk) is streamed from where it is in httpx's 64 KiB
    reads, its length known up front (the request has a Content-Length), never read whole into memory.
    """

    def __init__(self, client: httpx.AsyncClient, transport: httpx.AsyncBaseTransport) -> None:
        self._client = client
        self._transport = transport
        self._base_url = str(client.base_url).rstrip("/")
        self._default_headers = list(client.headers.multi_items())
        self._timeout = client.timeout.as_dict()
        # The transport's own mapping of httpx's timeouts (httpx_aiohttp: the pool's wait is aiohttp's `connect`).
        self._aiohttp_timeout = ClientTimeout(
            sock_connect=self._timeout.get("connect"),
            sock_read=self._timeout.get("read"),
            connect=self._timeout.get("pool"),
        )

    async def create(self, api_key: str, body: dict[str, Any]) -> UpstreamTask:
        response = await self._send("POST", "/v1/images/generations", api_key, orjson.dumps(body))
        return parse_task(self._json(response))

    async def get(self, api_key: str, upstream_task_id: str) -> UpstreamTask:
        response = await self._send("GET", f"/v1/images/generations/{upstream_task_id}", api_key)
        return parse_task(self._json(response))

    async def upload(
        self, api_key: str, filename: str, content: UploadContent, content_type: str, purpose: str
    ) -> UploadedFile:
        try:
            response = await self._client.post(
                "/v1/uploads/images",
                headers=_headers(api_key),
                files={"file": (filename, content, content_type)},
                data={"purpose": purpose},
            )
        except httpx.TimeoutException as e:
            raise UpstreamTimeout("Upstream timed out") from e
        except httpx.HTTPError as e:
            raise UpstreamUnavailable("Upstream unreachable") from e
        if response.status_code >= 500:
            raise UpstreamServerError(response.status_code)
        if response.status_code in (401, 403):
            raise _credentials_refused(response.status_code, "POST", "/v1/uploads/images")
        payload = self._json(response, allow_error=response.status_code >= 400)
        data = payload.get("data")
        if response.status_code >= 400 or not payload.get("success") or not isinstance(data, dict):
            raise UploadRefused(
                response.status_code if response.status_code >= 400 else 400,
                str(payload.get("message") or "Upload refused by upstream"),
                retry_after_s=parse_retry_after(response.headers.get("retry-after"), utcnow())
                if response.status_code == 429
                else None,
            )
        return UploadedFile(
            id=str(data.get("id")),
            url=str(data.get("url")),
            mime_type=str(data.get("mime_type") or content_type),
            size=int(data.get("size") or _length(content)),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _exchange(self, method: str, path: str, api_key: str, content: bytes | None) -> Answer:
        headers = [*self._default_headers, *_headers(api_key).items()]
        if content is not None:
            headers.append(("Content-Type", "application/json"))
        transport = self._transport
        if isinstance(transport, AiohttpTransport) and "handle_async_request" not in vars(transport):
            return await self._exchange_over_aiohttp(transport, method, self._base_url + path, headers, content)
        request = httpx.Request(
            method, self._base_url + path, headers=headers, content=content, extensions={"timeout": self._timeout}
        )
        response = await transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return Answer(response.status_code, response.headers, response.content)

    async def _exchange_over_aiohttp(
        self, transport: AiohttpTransport, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Answer:
        """What the transport does with the same request (its session, timeouts and error mapping, so callers see the
        same httpx exceptions), without building an httpx request and response around aiohttp's: that wrapping cost
        as much CPU as the exchange. Not used once an instrumentation has wrapped the transport (tracing), so its
        spans see every call."""
        session = transport.client
        if not isinstance(session, ClientSession):
            session = transport.client = transport.get_client()
        with map_aiohttp_exceptions():
            async with session.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=False,
                timeout=self._aiohttp_timeout,
            ) as response:
                return Answer(response.status, response.headers, await response.read())

    async def _send(self, method: str, path: str, api_key: str, content: bytes | None = None) -> Answer:
        try:
            response = await self._exchange(method, path, api_key, content)
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as e:  # nothing was sent: certainly not created
            raise UpstreamUnavailable(f"Upstream unreachable: {type(e).__name__}") from e
        except httpx.TimeoutException as e:  # sent, no answer: the upstream may have the task
            raise UpstreamTimeout("Upstream timed out") from e
        except httpx.HTTPError as e:
            raise UpstreamUnavailable(f"Upstream unreachable: {type(e).__name__}") from e
        if response.status_code >= 500:
            raise UpstreamServerError(response.status_code)
        if response.status_code in (401, 403):
            # Passed through, it would tell the tenant that *its* key is wrong.
            raise _credentials_refused(response.status_code, method, path)
        if response.status_code >= 400:
            body = self._json(response, allow_error=True)
            headers = {k.lower(): v for k, v in response.headers.items() if k.lower() in _PASSTHROUGH_HEADERS}
            raise UpstreamRejected(response.status_code, body, headers)
        return response

    @staticmethod
    def _json(response: Answer | httpx.Response, *, allow_error: bool = False) -> dict[str, Any]:
        try:
            payload = orjson.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # orjson's error is a json.JSONDecodeError
            if allow_error:
                return {}
            raise UpstreamUnavailable("Upstream answered with a body that is not JSON") from e
        if not isinstance(payload, dict):
            if allow_error:
                return {}
            raise UpstreamUnavailable("Upstream answered with an unexpected body")
        return payload
