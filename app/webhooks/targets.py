"""Where a webhook may go: http(s) URLs, origins, and the addresses they resolve to (SSRF guard).

A target is refused when it is not http(s), carries user info, or resolves to an address that is not global
(loopback, private, link-local, shared, multicast, reserved, unspecified), unless GATEWAY_WEBHOOK_ALLOW_PRIVATE is
set. The check runs when a target is configured (the name resolved) and again at every delivery, on the very
addresses the sender then connects to (app/webhooks/sender.py), so a name that changes what it points to between the
two (DNS rebinding) cannot reach an internal address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.contract import text_problem

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
RESOLVE_TIMEOUT_S = 5.0
MAX_URL_CHARS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}


class TargetRefused(ValueError):
    """A webhook target the gateway will not call; the message says why, for the operator or the tenant."""


@dataclass(frozen=True)
class Target:
    """A parsed http(s) URL: what to connect to, and what to call it (Host header, TLS name)."""

    url: str
    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int
    path_and_query: str

    @property
    def origin(self) -> str:
        return origin_of(self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def redacted(self) -> str:
        """The URL without its query (which may carry a token): for logs and the audit log."""
        return self.origin + self.path_and_query.split("?", 1)[0]


def origin_of(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" if port == DEFAULT_PORTS[scheme] else f"{scheme}://{shown}:{port}"


def parse_target(url: str) -> Target:
    """An http(s) URL with a host and no user info, or TargetRefused."""
    if len(url) > MAX_URL_CHARS:
        raise TargetRefused(f"The URL is longer than {MAX_URL_CHARS} characters.")
    if text_problem(url) is not None or any(c.isspace() for c in url) or "\\" in url:
        raise TargetRefused("The URL must not contain spaces, backslashes or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise TargetRefused(f"The URL cannot be parsed ({e}).") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise TargetRefused("Only http and https URLs are allowed.")
    if "@" in parts.netloc:
        raise TargetRefused("The URL must not contain user info (user:password@).")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise TargetRefused("The URL has no host.")
    try:
        host.encode("idna")
    except UnicodeError:
        raise TargetRefused("The URL's host is not a valid name.") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url=url, scheme=scheme, host=host, port=port or DEFAULT_PORTS[scheme], path_and_query=path)


def parse_origin(value: str) -> str:
    """An origin (`scheme://host[:port]`, nothing after it) in canonical form, or TargetRefused."""
    target = parse_target(value.strip().rstrip("/"))
    if target.path_and_query != "/":
        raise TargetRefused(f"An origin is scheme://host[:port] only, without a path or query: {value!r}.")
    return target.origin


def address_problem(address: str, *, allow_private: bool) -> str | None:
    """Why a connection to `address` is refused (None when it is allowed)."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_private:
        return None
    if not ip.is_global or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return (
            f"{ip} is not a public address (loopback, private, link-local and other internal addresses are refused "
            "unless GATEWAY_WEBHOOK_ALLOW_PRIVATE is set)"
        )
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (an IP literal is itself)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=RESOLVE_TIMEOUT_S)
    seen: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


async def allowed_addresses(target: Target, resolver: Resolver, *, allow_private: bool) -> list[str]:
    """The addresses of `target`, every one of them allowed; TargetRefused when it does not resolve or any one is
    refused (a name with one internal address among public ones is refused as a whole)."""
    try:
        addresses = await resolver(target.host, target.port)
    except (OSError, TimeoutError, UnicodeError) as e:
        raise TargetRefused(f"The host {target.host!r} does not resolve ({type(e).__name__}).") from None
    if not addresses:
        raise TargetRefused(f"The host {target.host!r} does not resolve.")
    problems: Sequence[str] = [p for a in addresses if (p := address_problem(a, allow_private=allow_private))]
    if problems:
        raise TargetRefused(f"Refused target {target.host!r}: {problems[0]}.")
    return addresses
