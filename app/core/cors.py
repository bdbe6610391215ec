"""CORS for browser callers: which origins, and which headers they may send and read.

Browsers send the tenant key or an end-user token in the Authorization header, never in a cookie, so credentials
stay off (and `*` is a valid choice). The origins are each tenant's (`tenants.cors_origins`), GATEWAY_CORS_ORIGINS
being the default; the middleware that answers per tenant is app/access/cors.py, wrapping the whole app (the fast
paths included).
"""

from __future__ import annotations

from urllib.parse import urlsplit

ANY_ORIGIN = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443}

ALLOWED_METHODS = ("GET", "POST")  # the tenant API's; the ops API is not for browsers
ALLOWED_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID")
EXPOSED_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After", "X-Request-ID")
PREFLIGHT_MAX_AGE_S = 600


def normalize_origin(value: str, *, allow_any: bool = False) -> str:
    """An origin as browsers send it in `Origin` (`scheme://host[:port]`, lower case, no default port, nothing
    after it), or ValueError. `allow_any`: `*` (every origin) is one too."""
    text = value.strip()
    if allow_any and text == ANY_ORIGIN:
        return ANY_ORIGIN
    try:
        parts = urlsplit(text.rstrip("/") if text.count("/") == 3 else text)
        port = parts.port
    except ValueError:
        raise ValueError(f"not an origin: {value!r}") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if (
        scheme not in _DEFAULT_PORTS
        or not host
        or parts.path
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or not text.isascii()
        or any(c.isspace() or ord(c) < 0x20 for c in text)
    ):
        raise ValueError(f"not an origin (scheme://host[:port], nothing after it): {value!r}")
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + ("" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}")
