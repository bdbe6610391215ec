"""CORS for browser callers (GATEWAY_CORS_ORIGINS): which origins, and which headers they may send and read.

Browsers send the tenant key in the Authorization header, never in a cookie, so credentials stay off (and `*` is
a valid choice). The middleware wraps the whole app, the status fast path included (app/main.py).
"""

from __future__ import annotations

from typing import Any

ALLOWED_METHODS = ("GET", "POST")  # the tenant API's; the ops API is not for browsers
ALLOWED_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID")
EXPOSED_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After", "X-Request-ID")
PREFLIGHT_MAX_AGE_S = 600


def cors_options(origins: list[str]) -> dict[str, Any]:
    """Starlette CORSMiddleware's options for these origins (`*` = any)."""
    return {
        "allow_origins": [origin.rstrip("/") for origin in origins],
        "allow_methods": list(ALLOWED_METHODS),
        "allow_headers": list(ALLOWED_HEADERS),
        "expose_headers": list(EXPOSED_HEADERS),
        "allow_credentials": False,
        "max_age": PREFLIGHT_MAX_AGE_S,
    }
