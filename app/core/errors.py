"""One exception base carrying its HTTP status and the contract's error fields."""

from __future__ import annotations

from typing import Any


class SettingsError(RuntimeError):
    """The configuration or the database cannot run; the message is one line for the operator."""


class SecretKeyMismatch(SettingsError):
    """What the ledger holds was encrypted under another GATEWAY_SECRET_KEY than the ones configured."""


class GatewayError(Exception):
    """An expected outcome rendered as `{"error": {"code", "message", "type", "param"}}`."""

    status_code = 500
    code: str | int = "internal_error"
    type = "api_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        code: str | int | None = None,
        status_code: int | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        if type_ is not None:
            self.type = type_

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "type": self.type}
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


class InvalidRequest(GatewayError):
    status_code = 400
    code = "invalid_request"
    type = "invalid_request_error"


class UnsupportedMediaType(InvalidRequest):
    status_code = 415


class PayloadTooLarge(InvalidRequest):
    status_code = 413


class Unauthorized(GatewayError):
    status_code = 401
    code = "unauthorized"
    type = "authentication_error"


class InsufficientQuota(GatewayError):
    status_code = 402
    code = "insufficient_quota"
    type = "insufficient_quota"


class NotFound(GatewayError):
    status_code = 404
    code = "task_not_found"
    type = "not_found_error"


class Conflict(GatewayError):
    status_code = 409
    code = "conflict"
    type = "invalid_request_error"


class RateLimited(GatewayError):
    status_code = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"


class UpstreamUnavailable(GatewayError):
    """The upstream answered 5xx, or could not be reached."""

    status_code = 502
    code = "upstream_error"
    type = "api_error"


class UpstreamCredentialsRefused(UpstreamUnavailable):
    """The upstream answered 401/403 to the organisation's key: the gateway's problem, never the caller's key."""

    code = "upstream_auth_failed"


class UpstreamTimeout(GatewayError):
    status_code = 504
    code = "upstream_timeout"
    type = "api_error"


class NoUpstreamKey(GatewayError):
    status_code = 503
    code = "upstream_unavailable"
    type = "api_error"


class UpstreamRejected(GatewayError):
    """The upstream refused a request with a 4xx: passed to the caller with its status and envelope."""

    def __init__(self, status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        assert isinstance(error, dict)
        super().__init__(
            str(error.get("message") or "Upstream refused the request"),
            param=error.get("param"),
            headers=headers,
            code=error.get("code") or "upstream_rejected",
            status_code=status_code,
            type_=error.get("type") or "invalid_request_error",
        )
        self._body = body if error else {"error": {"code": self.code, "message": self.message}}

    def body(self) -> dict[str, Any]:
        return self._body
