"""Addresses: what a bind address means for a client on the same machine."""

from __future__ import annotations

import ipaddress

# Binding to these listens on every interface; a client on this machine reaches the server on loopback.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def local_host_for(bind_host: str) -> str:
    """The host a client on this machine uses to reach a server bound to `bind_host`."""
    return "127.0.0.1" if bind_host.strip() in WILDCARD_HOSTS else bind_host


def is_loopback(host: str | None) -> bool:
    """Whether an address (or `localhost`) is this machine's loopback."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
