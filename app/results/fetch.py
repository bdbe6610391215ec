"""Fetching a result image from the upstream's link, streamed, under the webhooks' SSRF rule.

The link's host is resolved and every address checked (app/webhooks/targets.py: global unicast only, unless
private addresses are allowed), and the request goes to one of those very addresses, the name kept in the Host
header and as the TLS server name, as the webhook sender does: what was checked is what is connected to. A redirect
is followed (a CDN may send one) only to a link that passes the same checks, at most MAX_REDIRECTS times. The body
is never held whole: it is handed on in the chunks it arrives in, and refused past the size cap (by its
Content-Length up front, by its count as it streams). Only an image (by its magic bytes) is taken.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from app.contract import sniff_image_type
from app.webhooks.targets import Resolver, TargetRefused, allowed_addresses, parse_target

MAX_REDIRECTS = 3
TIMEOUT = httpx.Timeout(30.0, connect=5.0)  # per read: a stalled body fails the attempt, however big the image
CHUNK_BYTES = 256 * 1024
_SNIFF_BYTES = 12


class FetchError(Exception):
    """The image could not be fetched this time; `status` is the upstream's HTTP status when it answered."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Download:
    """An image being fetched: its type (sniffed) and its bytes, as they arrive."""

    content_type: str
    chunks: AsyncIterator[bytes]


class Fetcher:
    def __init__(
        self,
        resolver: Resolver,
        *,
        allow_private: bool,
        user_agent: str,
        max_bytes: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._resolver = resolver
        self._allow_private = allow_private
        self.max_bytes = max_bytes
        self._client = httpx.AsyncClient(
            timeout=TIMEOUT,
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": user_agent},
            transport=transport,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=0),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    @asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[Download]:
        """The image at `url`, streamed; FetchError when it cannot be had (refused, unreachable, not an image, too
        big: the message says which)."""
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._send(url)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = str(response.url.join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise FetchError(f"HTTP {response.status_code}", status=response.status_code)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise FetchError(f"{declared} bytes, over the {self.max_bytes}-byte cap", status=200)
                yield await self._download(response)
                return
            finally:
                await response.aclose()
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    async def _send(self, url: str) -> httpx.Response:
        try:
            target = parse_target(url)
            addresses = await allowed_addresses(
                target, self._resolver, allow_private=self._allow_private, setting="GATEWAY_RESULTS_ALLOW_PRIVATE"
            )
        except TargetRefused as e:
            raise FetchError(f"refused: {e}") from None
        last: httpx.HTTPError | None = None
        for address in addresses:
            host = f"[{address}]" if ":" in address else address
            request = self._client.build_request(
                "GET",
                f"{target.scheme}://{host}:{target.port}{target.path_and_query}",
                headers={"Host": target.host_header, "Accept": "image/*"},
                extensions={"sni_hostname": target.host} if target.scheme == "https" else None,
            )
            try:
                return await self._client.send(request, stream=True)
            except httpx.ConnectError as e:  # the name's next address, if any
                last = e
            except httpx.HTTPError as e:
                raise FetchError(f"{type(e).__name__}: {e}") from None
        raise FetchError(f"{type(last).__name__}: {last}") from None

    async def _download(self, response: httpx.Response) -> Download:
        stream = response.aiter_bytes(CHUNK_BYTES)
        head = b""
        try:
            async for chunk in stream:
                head += chunk
                if len(head) >= _SNIFF_BYTES:
                    break
        except httpx.HTTPError as e:
            raise FetchError(f"{type(e).__name__}: {e}") from None
        content_type = sniff_image_type(head)
        if content_type is None:
            raise FetchError("not an image (JPEG, PNG, WebP or GIF)", status=response.status_code)
        if len(head) > self.max_bytes:
            raise FetchError(f"over the {self.max_bytes}-byte cap", status=200)
        return Download(content_type, self._rest(head, stream))

    async def _rest(self, head: bytes, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        seen = len(head)
        if head:
            yield head
        try:
            async for chunk in stream:
                seen += len(chunk)
                if seen > self.max_bytes:
                    raise FetchError(f"over the {self.max_bytes}-byte cap", status=200)
                yield chunk
        except httpx.HTTPError as e:
            raise FetchError(f"{type(e).__name__}: {e}") from None
