"""Tenant-specific errors in the one error envelope."""

from __future__ import annotations

from app.core.errors import GatewayError


class Forbidden(GatewayError):
    """A valid key without the scope the route needs (403 in the error envelope)."""

    status_code = 403
    code = "forbidden"
    type = "permission_error"
