"""Where a webhook may go: http(s) URLs, origins, and the addresses they resolve to (SSRF guard).

A target is refused when it is not http(s), carries user info, or resolves to an address that is not global unicast,
unless GATEWAY_WEBHOOK_ALLOW_PRIVATE is set. Global unicast is an allow-list (`address_problem`): IPv6 only inside
2000::/3 less its special-purpose blocks (Teredo among them), IPv4 only outside the special-purpose blocks, and an
address that wraps an IPv4 one (IPv4-mapped, 6to4, NAT64) is judged by what it wraps. The check runs when a target
is configured (the name resolved) and again at every delivery, on the very addresses the sender then connects to
(app/webhooks/sender.py), so a name that changes what it points to between the two (DNS rebinding) cannot reach an
internal address.
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


# IPv4 outside these blocks is global unicast: the IANA special-purpose registry's blocks that are not globally
# reachable (all of 192.0.0.0/24, whose two anycast exceptions are no webhook receivers), the deprecated 6to4 relay
# anycast, multicast, and 240/4 with the broadcast address. Spelled out rather than taken from `is_global`, whose
# table differs between Python versions (3.11 calls 192.0.0.8 global).
_NOT_GLOBAL_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
# IPv6 global unicast is 2000::/3 (which leaves out loopback, unspecified, IPv4-compatible, site-local fec0::/10, unique
# local fc00::/7, link-local, multicast, 64:ff9b::/96 unless unwrapped), less its special-purpose blocks: 2001::/23
# (IETF assignments: Teredo 2001::/32, benchmarking, ORCHID, documentation 2001:db8::/32) and documentation
# 3fff::/20. 2002::/16 (6to4) is unwrapped before this test is reached.
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NOT_GLOBAL_V6 = tuple(ipaddress.IPv6Network(n) for n in ("2001::/23", "2001:db8::/32", "3fff::/20"))
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix: a DNS64 host's view of IPv4


def _wrapped_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries to the network (IPv4-mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


WEBHOOK_SETTING = "GATEWAY_WEBHOOK_ALLOW_PRIVATE"


def address_problem(address: str, *, allow_private: bool, setting: str = WEBHOOK_SETTING) -> str | None:
    """Why a connection to `address` is refused (None when it is allowed): the one rule for every address the
    gateway connects to on a tenant's or an operator's behalf."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if allow_private:
        return None
    shown = str(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:  # inside 2001::/23, refused below; named here so the operator sees what it hides
            shown = f"{ip} (Teredo, server {ip.teredo[0]}, client {ip.teredo[1]})"
        elif (inner := _wrapped_v4(ip)) is not None:
            shown, ip = f"{ip} (wrapping {inner})", inner
    if isinstance(ip, ipaddress.IPv4Address):
        allowed = not any(ip in n for n in _NOT_GLOBAL_V4)
    else:
        allowed = ip in _GLOBAL_UNICAST_V6 and not any(ip in n for n in _NOT_GLOBAL_V6)
    if not allowed or not ip.is_global:  # Python's table as well: whatever either calls internal is refused
        return (
            f"{shown} is not a global unicast address (loopback, private, link-local, site-local, special-purpose "
            f"and other internal addresses are refused unless {setting} is set)"
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


async def allowed_addresses(
    target: Target, resolver: Resolver, *, allow_private: bool, setting: str = WEBHOOK_SETTING
) -> list[str]:
    """The addresses of `target`, every one of them allowed; TargetRefused when it does not resolve or any one is
    refused (a name with one internal address among public ones is refused as a whole)."""
    try:
        addresses = await resolver(target.host, target.port)
    except (OSError, TimeoutError, UnicodeError) as e:
        raise TargetRefused(f"The host {target.host!r} does not resolve ({type(e).__name__}).") from None
    if not addresses:
        raise TargetRefused(f"The host {target.host!r} does not resolve.")
    problems: Sequence[str] = [
        p for a in addresses if (p := address_problem(a, allow_private=allow_private, setting=setting))
    ]
    if problems:
        raise TargetRefused(f"Refused target {target.host!r}: {problems[0]}.")
    return addresses
