"""The OpenAPI document says what the gateway answers: validation errors are 400 in the error envelope.

FastAPI documents a 422 `HTTPValidationError` on every operation with parameters; the gateway answers those
failures with 400 `invalid_request` (error_handlers.py). 422 stays only where the upstream itself answers it
(content_policy_violation on create).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

UPSTREAM_422_OPERATIONS = frozenset({("post", "/v1/images/generations")})
_ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"
_UPLOAD_REF = "#/components/schemas/UploadResponse"


def install_openapi(app: FastAPI) -> None:
    """Post-process the generated document once: 400 documented, FastAPI's 422 dropped where it never happens."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                _document_errors(path, method, operation)
        components = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_errors(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if (method, path) not in UPSTREAM_422_OPERATIONS:
        responses.pop("422", None)
    if path != "/healthz":  # everything else reads the database, which can be away for a moment
        responses.setdefault(
            "503",
            {
                "description": "Database (or every upstream key) unavailable; retry after `Retry-After` seconds",
                "content": {"application/json": {"schema": {"$ref": _ENVELOPE_REF}}},
            },
        )
    if operation.get("parameters") or operation.get("requestBody"):
        ref = _UPLOAD_REF if path.startswith("/v1/uploads") else _ENVELOPE_REF
        responses.setdefault(
            "400",
            {"description": "Invalid request", "content": {"application/json": {"schema": {"$ref": ref}}}},
        )
