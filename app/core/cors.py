"""CORS for browser callers: which origins, and which headers they may send and read.

Browsers send the tenant key or an end-user token in the Authorization header, never in a cookie, so credentials
stay off (and `*` is a valid choice). The origins are each tenant's (`tenants.cors_origins`), GATEWAY_CORS_ORIGINS
being the default; the middleware that answers per tenant is app/access/cors.py, wrapping the whole app (the fast
paths included).
"""

from __future__ import annotations

import re

ANY_ORIGIN = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}"
# An http(s) origin: a host name (or IPv4 address) of dot-separated labels, an optional port, nothing after it.
ORIGIN_PATTERN = rf"^([Hh][Tt][Tt][Pp][Ss]?)://({_LABEL}(?:\.{_LABEL})*)(?::({_PORT}))?/?$"
ANY_ORIGIN_PATTERN = rf"^\*$|{ORIGIN_PATTERN}"  # an origin, or `*` (any)
_ORIGIN = re.compile(ORIGIN_PATTERN)

ALLOWED_METHODS = ("GET", "POST")  # the tenant API's; the ops API is not for browsers
ALLOWED_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID")
EXPOSED_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After", "X-Request-ID")
PREFLIGHT_MAX_AGE_S = 600


def normalize_origin(value: str, *, allow_any: bool = False) -> str:
    """An origin as browsers send it in `Origin` (`scheme://host[:port]`, lower case, no default port, nothing
    after it but an optional `/`), or ValueError. `allow_any`: `*` (every origin) is one too. Exactly what
    ORIGIN_PATTERN (or ANY_ORIGIN_PATTERN) matches is accepted, so the API's schema says what the rule is."""
    if allow_any and value == ANY_ORIGIN:
        return ANY_ORIGIN
    found = _ORIGIN.fullmatch(value)
    if found is None:
        raise ValueError(f"not an origin (http(s)://host[:port], nothing after it): {value!r}")
    scheme, host, port = found.group(1).lower(), found.group(2).lower(), found.group(3)
    default = port is None or int(port) == _DEFAULT_PORTS[scheme]
    return f"{scheme}://{host}" + ("" if default else f":{int(port)}")
