"""One POST of one event, to an address checked at the moment of the call.

The host is resolved, every address it has is checked (app/webhooks/targets.py), and the request goes to one of
those very addresses, with the name kept in the Host header and as the TLS server name (so certificates are checked
against the name): what was checked is what is connected to, whatever the name resolves to a moment later.
Connections are not kept alive (a connection opened for one name is never reused for another one on the same
address), redirects are not followed (a 3xx is a failed attempt), and proxies from the environment are ignored.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from app.webhooks.targets import Resolver, TargetRefused, allowed_addresses, parse_target

TIMEOUT_S = 10.0  # the upstream's: an answer within 10 s, or the attempt failed
_MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    status_code: int | None = None
    error: str | None = None


class Sender:
    def __init__(
        self,
        resolver: Resolver,
        *,
        allow_private: bool,
        user_agent: str,
        timeout_s: float = TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._resolver = resolver
        self._allow_private = allow_private
        self._timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": user_agent},
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        """Deliver once; never raises for what the receiver (or the network) does."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._post(url, body, headers)
        except TargetRefused as e:
            return Outcome(False, error=f"refused: {e}"[:_MAX_ERROR_CHARS])
        except TimeoutError:
            return Outcome(False, error=f"timeout: no answer within {self._timeout_s:g} s")
        except httpx.HTTPError as e:
            return Outcome(False, error=f"{type(e).__name__}: {e}"[:_MAX_ERROR_CHARS])

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        target = parse_target(url)
        addresses = await allowed_addresses(target, self._resolver, allow_private=self._allow_private)
        last: httpx.HTTPError | None = None
        for address in addresses:
            host = f"[{address}]" if ":" in address else address
            request = self._client.build_request(
                "POST",
                f"{target.scheme}://{host}:{target.port}{target.path_and_query}",
                content=body,
                headers={**headers, "Host": target.host_header},
                extensions={"sni_hostname": target.host} if target.scheme == "https" else None,
            )
            try:
                response = await self._client.send(request, stream=True)
            except httpx.ConnectError as e:  # the next address of the name, if any
                last = e
                continue
            await response.aclose()  # the status is all that counts; the body is never read
            if 200 <= response.status_code < 300:
                return Outcome(True, status_code=response.status_code)
            return Outcome(False, status_code=response.status_code, error=f"HTTP {response.status_code}")
        assert last is not None
        raise last
