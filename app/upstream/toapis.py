"""Adapter for the ToAPIs upstream (async tasks: create, then poll), over one aiohttp session.

One way to the upstream for every call: create, status and upload each make one `ClientSession.request` on the
session the lifespan built (`build_session`), and every failure of the exchange becomes a gateway error in one place
(`ToAPIsAdapter._exchange`). aiohttp rather than httpx: httpx's client over the same aiohttp connection cost 3.2x
the CPU of each call, and 18% to 28% more CPU per submit (`bench/upstream_transport.py`, `bench/hot_path.py`;
bench/RESULTS.md, "issue 20: one way upstream").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO, NamedTuple

import aiohttp
import certifi
import orjson

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

# How long an idle connection to the upstream is kept for the next call (httpx's default, which the gateway had).
KEEPALIVE_S = 5.0


class Answer(NamedTuple):
    """An upstream's answer, read whole."""

    status_code: int
    headers: Mapping[str, str]  # case-insensitive (aiohttp's)
    content: bytes


# Headers of a 4xx worth passing on to the caller (rate-limit hints in particular).
_PASSTHROUGH_HEADERS = (
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-category",
)


def build_session(
    *,
    user_agent: str,
    timeout_s: float,
    connect_timeout_s: float,
    max_connections: int,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> aiohttp.ClientSession:
    """The upstream's one client, built in the lifespan: at most `max_connections` connections, kept alive between
    calls; `connect_timeout_s` to get a connection (waiting for a free one included), `timeout_s` between two reads
    of an answer; no overall limit, no redirects followed, no proxy from the environment, certifi's CAs."""
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        keepalive_timeout=KEEPALIVE_S,
        ssl=ssl.create_default_context(cafile=certifi.where()),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s, sock_read=timeout_s
        ),
        headers={"User-Agent": user_agent, "Accept": "application/json"},
        trace_configs=list(trace_configs) or None,
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


@contextlib.contextmanager
def _to_send(content: UploadContent) -> Iterator[bytes | BinaryIO]:
    """What aiohttp is handed to send, from its start. aiohttp closes a file once it has sent it, and the caller's
    file must outlive the call (the next key may need it): aiohttp gets a file object of its own on a duplicate of
    the file's descriptor, which it reads in 64 KiB pieces with its size known. A file object without a descriptor
    (in memory already) is handed over as its bytes."""
    if isinstance(content, bytes):
        yield content
        return
    content.flush()  # what the caller wrote and still buffers reaches the file
    try:
        descriptor = content.fileno()  # a spooled upload still in memory goes to disk first
    except (OSError, AttributeError):  # io.UnsupportedOperation is an OSError
        content.seek(0)
        yield content.read()
        return
    with open(os.dup(descriptor), "rb") as copy:  # shares the file and its offset, not the object's buffer
        copy.seek(0)  # the descriptor's offset is wherever the caller's buffered reads left it
        yield copy


def _headers(api_key: str) -> dict[str, str]:
    """The key, and the request id of the request this call serves (a new one for a background call), so that the
    upstream's logs and the gateway's meet."""
    return {"Authorization": f"Bearer {api_key}", REQUEST_ID_HEADER: current_request_id() or new_request_id()}


class ToAPIsAdapter:
    """Speaks /v1/images/generations and /v1/uploads/images to a ToAPIs-compatible upstream at `base_url`, over
    `session` (build_session), which it closes.

    Every call is one `session.request` (`_exchange`), and every failure of the exchange is mapped there, whatever
    the call: no connection within the connect timeout is unreachable (502 `upstream_error`: nothing was sent, so
    nothing was created), no answer within the read timeout is 504 `upstream_timeout` (sent: the upstream may have
    the task), any other network failure is unreachable (502). Then each answer is read by the same rules: a 5xx is
    `UpstreamServerError` (502), a 401/403 `UpstreamCredentialsRefused` (the organisation's key, never the caller's),
    another 4xx the upstream's own refusal (passed through; an upload's in its own envelope). An upload's file (an
    upload spooled to disk) is sent from its start in 64 KiB reads with its Content-Length, never read whole.
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")

    async def create(self, api_key: str, body: dict[str, Any]) -> UpstreamTask:
        path = "/v1/images/generations"
        answer = await self._exchange("POST", path, api_key, orjson.dumps(body), "application/json")
        return parse_task(self._json(self._accepted(answer, "POST", path)))

    async def get(self, api_key: str, upstream_task_id: str) -> UpstreamTask:
        path = f"/v1/images/generations/{upstream_task_id}"
        answer = await self._exchange("GET", path, api_key)
        return parse_task(self._json(self._accepted(answer, "GET", path)))

    async def upload(
        self, api_key: str, filename: str, content: UploadContent, content_type: str, purpose: str
    ) -> UploadedFile:
        path = "/v1/uploads/images"
        with _to_send(content) as image:
            form = aiohttp.FormData()
            form.add_field("purpose", purpose)
            form.add_field("file", image, filename=filename, content_type=content_type)
            answer = await self._exchange("POST", path, api_key, form)
        self._failed(answer, "POST", path)
        payload = self._json(answer, allow_error=answer.status_code >= 400)
        data = payload.get("data")
        if answer.status_code >= 400 or not payload.get("success") or not isinstance(data, dict):
            raise UploadRefused(
                answer.status_code if answer.status_code >= 400 else 400,
                str(payload.get("message") or "Upload refused by upstream"),
                retry_after_s=parse_retry_after(answer.headers.get("retry-after"), utcnow())
                if answer.status_code == 429
                else None,
            )
        return UploadedFile(
            id=str(data.get("id")),
            url=str(data.get("url")),
            mime_type=str(data.get("mime_type") or content_type),
            size=int(data.get("size") or _length(content)),
        )

    async def aclose(self) -> None:
        await self._session.close()

    async def _exchange(
        self,
        method: str,
        path: str,
        api_key: str,
        data: bytes | aiohttp.FormData | None = None,
        content_type: str | None = None,
    ) -> Answer:
        """The one way to the upstream: the request sent, its answer read whole, a failure as a gateway error."""
        headers = _headers(api_key)
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            async with self._session.request(
                method, self._base_url + path, headers=headers, data=data, allow_redirects=False
            ) as response:
                return Answer(response.status, response.headers, await response.read())
        except aiohttp.ConnectionTimeoutError as e:  # no connection in time: nothing was sent
            raise UpstreamUnavailable("Upstream unreachable: no connection within the connect timeout") from e
        except TimeoutError as e:  # sent, no answer in time: the upstream may have acted on it
            raise UpstreamTimeout("Upstream timed out") from e
        except aiohttp.ClientError as e:
            raise UpstreamUnavailable(f"Upstream unreachable: {type(e).__name__}") from e

    @staticmethod
    def _failed(answer: Answer, method: str, path: str) -> None:
        """The answers that are a failure whatever the call: a 5xx, the organisation's key refused."""
        if answer.status_code >= 500:
            raise UpstreamServerError(answer.status_code)
        if answer.status_code in (401, 403):
            # Passed through, it would tell the tenant that *its* key is wrong.
            raise _credentials_refused(answer.status_code, method, path)

    def _accepted(self, answer: Answer, method: str, path: str) -> Answer:
        """A task call's answer when it is a success; its 4xx passed through."""
        self._failed(answer, method, path)
        if answer.status_code >= 400:
            body = self._json(answer, allow_error=True)
            headers = {k.lower(): v for k, v in answer.headers.items() if k.lower() in _PASSTHROUGH_HEADERS}
            raise UpstreamRejected(answer.status_code, body, headers)
        return answer

    @staticmethod
    def _json(answer: Answer, *, allow_error: bool = False) -> dict[str, Any]:
        try:
            payload = orjson.loads(answer.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # orjson's error is a json.JSONDecodeError
            if allow_error:
                return {}
            raise UpstreamUnavailable("Upstream answered with a body that is not JSON") from e
        if not isinstance(payload, dict):
            if allow_error:
                return {}
            raise UpstreamUnavailable("Upstream answered with an unexpected body")
        return payload
