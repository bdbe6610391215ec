"""The gateway's own OpenAPI document against the upstream's (openapi/upstream.yaml, written by hand).

Direction matters. What callers send (request bodies, parameters) the gateway must accept at least as liberally
as the upstream: every upstream field, a superset of every enum, limits no tighter, no extra required field.
What the gateway answers (task object, envelopes) must fit the upstream's schema: every upstream property, enums
within the upstream's, the upstream's always-present fields always present.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import yaml
from fastapi import FastAPI

from app.core.config import Settings
from app.main import create_app

UPSTREAM_SPEC = Path(__file__).resolve().parents[1] / "openapi" / "upstream.yaml"
METHODS = ("get", "put", "post", "delete", "patch")
ERROR_FIELDS = ("code", "message", "type", "param")
UPLOAD_ENVELOPE_FIELDS = ("success", "message", "data")

Spec = dict[str, Any]
Schema = dict[str, Any]
Direction = Literal["request", "response"]

# Where the gateway is knowingly stricter than the upstream, keyed by (where, keyword), with the reason. Each
# entry must still match a real difference (test_accepted_deviations_are_still_real), so none outlives its cause.
ACCEPTED_DEVIATIONS: dict[tuple[str, str], str] = {
    ("POST /v1/images/generations request body.client_business_id", "maxLength"): (
        "stored in a String(255) column (app/models/task.py); the upstream documents no limit"
    ),
    ("POST /v1/images/generations request body.client_business_id", "pattern"): (
        "no control characters: stored in a text column, and PostgreSQL refuses NUL in text"
    ),
    ("POST /v1/images/generations request body.prompt", "pattern"): (
        "no control characters but tab, line feed and carriage return: stored (in the request JSON) and forwarded"
    ),
    ("POST /v1/images/generations request body.model", "enum"): (
        "the gateway serves Seedream 4.0 only and refuses another model before anything is spent"
    ),
    ("POST /v1/images/generations request body.image_urls[]", "pattern"): (
        "the upstream's `^https?://` with the scheme in any case (more liberal), a non-empty authority and no "
        "control characters (stored in the ledger's request JSON)"
    ),
    ("POST /v1/images/generations request body.callback_url", "pattern"): (
        "the upstream documents `format: uri` only; the gateway states the http(s) URL it checks for"
    ),
    ("POST /v1/uploads/images request body.file", "minLength"): (
        "an empty file is no JPEG, PNG, WebP or GIF image (the types the upstream documents): refused locally"
    ),
}


@dataclass(frozen=True)
class Problem:
    """One difference: where it is, the schema keyword involved, and what differs."""

    where: str
    keyword: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: [{self.keyword}] {self.detail}"


# --- reading OpenAPI documents -------------------------------------------------------------------------------


class Resolver:
    """Follows local `$ref`s and flattens anyOf/oneOf/allOf/type lists of one document."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def deref(self, node: Any) -> Schema:
        seen: set[str] = set()
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            assert isinstance(ref, str) and ref.startswith("#/"), f"only local $refs are supported, got {ref!r}"
            assert ref not in seen, f"$ref cycle at {ref}"
            seen.add(ref)
            target: Any = self.spec
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            # Siblings of $ref (3.1 allows them: description, default...) stay visible next to the target's keys.
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **siblings} if siblings else target
        assert isinstance(node, dict), f"expected a schema object, got {node!r}"
        return node

    def alternatives(self, node: Any) -> list[Schema]:
        """The schema as a list of single-type alternatives (`type` is one string or "any")."""
        schema = self.deref(node)
        if "allOf" in schema:
            merged: Schema = {k: v for k, v in schema.items() if k != "allOf"}
            properties: dict[str, Any] = {}
            required: set[str] = set()
            for part in [*schema["allOf"], merged]:
                sub = self.deref(part)
                merged = {**sub, **merged}
                properties.update(sub.get("properties", {}))
                required.update(sub.get("required", []))
            if properties:
                merged["properties"] = properties
            if required:
                merged["required"] = sorted(required)
            return self.alternatives(merged)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return [alt for part in schema[key] for alt in self.alternatives(part)]
        schema = dict(schema)
        if "const" in schema:
            schema["enum"] = [schema.pop("const")]
        types = schema.get("type")
        if types is None:
            types = sorted({_json_type(v) for v in schema["enum"]}) if "enum" in schema else ["any"]
        if isinstance(types, str):
            types = [types]
        return [{**schema, "type": t} for t in types]

    def operations(self) -> dict[str, Schema]:
        """`METHOD /path` -> operation, with the document-wide `security` applied where an operation has none."""
        found: dict[str, Schema] = {}
        for path, item in self.spec.get("paths", {}).items():
            for method in METHODS:
                if method in item:
                    op = dict(item[method])
                    op.setdefault("security", self.spec.get("security", []))
                    found[f"{method.upper()} {path}"] = op
        return found

    def response(self, op: Schema, status: str) -> Schema:
        return self.deref(op["responses"][status])

    def json_schema(self, response: Schema) -> Any | None:
        content = response.get("content", {})
        media = content.get("application/json")
        return None if media is None else media.get("schema")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    return "string" if isinstance(value, str) else "object" if isinstance(value, dict) else "array"


# --- comparing schemas ---------------------------------------------------------------------------------------

_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems")


def _covers(wide: str, narrow: str) -> bool:
    return wide == narrow or wide == "any" or (wide == "number" and narrow == "integer")


def _describe(alts: list[Schema]) -> str:
    return ", ".join(f"{a['type']}{' ' + repr(a['enum']) if 'enum' in a else ''}" for a in alts) or "nothing"


class Comparator:
    """Compares one app schema with one upstream schema in a direction, collecting Problems."""

    def __init__(self, app: Resolver, upstream: Resolver) -> None:
        self.app = app
        self.upstream = upstream

    def compare(self, app_node: Any, up_node: Any, where: str, direction: Direction) -> list[Problem]:
        app_alts = self.app.alternatives(app_node)
        up_alts = self.upstream.alternatives(up_node)
        if direction == "request":
            # Every reading the upstream accepts must be accepted by the app.
            needs, offers, needs_side, offers_side = up_alts, app_alts, "upstream accepts", "the app's schema"
        else:
            # Every shape the app emits must be one the upstream emits. The gateway renders responses without
            # nulls (response_model_exclude_none, hand-built envelopes), so a null alternative means "absent".
            needs = [a for a in app_alts if a["type"] != "null"] or app_alts
            offers, needs_side, offers_side = up_alts, "the app may emit", "the upstream's schema"
        problems: list[Problem] = []
        for need in needs:
            candidates = [o for o in offers if _covers(o["type"], need["type"])]
            if not candidates:
                problems.append(
                    Problem(
                        where,
                        "type",
                        (
                            f"{needs_side} {_describe([need])}, which {offers_side} does not allow "
                            f"(app: {_describe(app_alts)}; upstream: {_describe(up_alts)})"
                        ),
                    )
                )
                continue
            attempts: list[list[Problem]] = []
            for offer in candidates:
                app_alt, up_alt = (offer, need) if direction == "request" else (need, offer)
                attempts.append(self._compare_alt(app_alt, up_alt, where, direction))
            fewest: list[Problem] = min(attempts, key=len)
            problems.extend(fewest)
        return problems

    def _compare_alt(self, app: Schema, up: Schema, where: str, direction: Direction) -> list[Problem]:
        problems = self._enum(app, up, where, direction) + self._bounds(app, up, where, direction)
        if "default" in app and "default" in up and app["default"] != up["default"]:
            problems.append(Problem(where, "default", f"app default {app['default']!r} != upstream {up['default']!r}"))
        narrow, wide = (app, up) if direction == "response" else (up, app)
        if "pattern" in wide and wide.get("pattern") != narrow.get("pattern"):
            problems.append(
                Problem(
                    where,
                    "pattern",
                    (f"app pattern {app.get('pattern')!r} vs upstream {up.get('pattern')!r} ({direction})"),
                )
            )
        if app["type"] == "array" and up["type"] == "array":
            problems += self.compare(app.get("items", {}), up.get("items", {}), f"{where}[]", direction)
        if app["type"] == "object" and up["type"] == "object":
            problems += self._object(app, up, where, direction)
        return problems

    def _enum(self, app: Schema, up: Schema, where: str, direction: Direction) -> list[Problem]:
        app_enum, up_enum = app.get("enum"), up.get("enum")
        if direction == "request":
            if app_enum is None:
                return []
            missing = [v for v in (up_enum or []) if v not in app_enum]
            if up_enum is None or missing:
                lost = "any value" if up_enum is None else repr(missing)
                return [Problem(where, "enum", f"upstream accepts {lost}; the app only {app_enum!r}")]
            return []
        if up_enum is None:
            return []
        extra = [v for v in (app_enum or ["<any value>"]) if v not in up_enum]
        return [Problem(where, "enum", f"the app may emit {extra!r}; upstream only {up_enum!r}")] if extra else []

    def _bounds(self, app: Schema, up: Schema, where: str, direction: Direction) -> list[Problem]:
        problems: list[Problem] = []
        for keyword in (*_LOWER_BOUNDS, *_UPPER_BOUNDS):
            lower = keyword in _LOWER_BOUNDS
            # The side that must be at least as liberal: the app for requests, the upstream for responses.
            liberal, strict = (app, up) if direction == "request" else (up, app)
            if keyword not in liberal:
                continue
            if keyword not in strict or (
                liberal[keyword] > strict[keyword] if lower else liberal[keyword] < strict[keyword]
            ):
                problems.append(
                    Problem(
                        where,
                        keyword,
                        (
                            f"app {keyword}={app.get(keyword)!r} vs upstream {keyword}={up.get(keyword)!r}: the app is "
                            f"{'stricter' if direction == 'request' else 'looser'} ({direction})"
                        ),
                    )
                )
        return problems

    def _object(self, app: Schema, up: Schema, where: str, direction: Direction) -> list[Problem]:
        problems: list[Problem] = []
        app_props: dict[str, Any] = app.get("properties", {})
        app_required, up_required = set(app.get("required", [])), set(up.get("required", []))
        for name, up_prop in up.get("properties", {}).items():
            path = f"{where}.{name}"
            if direction == "response" and self.upstream.deref(up_prop).get("x-undocumented"):
                continue  # seen in the wild only: the gateway, exact in what it sends, need not emit it
            if name not in app_props:
                problems.append(Problem(path, "missing", f"upstream property '{name}' is absent from the app's schema"))
                continue
            problems += self.compare(app_props[name], up_prop, path, direction)
        if direction == "request":
            for name in sorted(app_required - up_required):
                problems.append(Problem(f"{where}.{name}", "required", "required by the app, optional upstream"))
            if app.get("additionalProperties") is False and up.get("additionalProperties") is not False:
                problems.append(Problem(where, "additionalProperties", "the app refuses unknown fields"))
        else:
            for name in sorted((up_required - app_required) & set(app_props)):
                # Pydantic writes a field with a default as optional, yet always serialises it.
                if self.app.deref(app_props[name]).get("default") is None:
                    problems.append(
                        Problem(
                            f"{where}.{name}",
                            "required",
                            "always present upstream, optional (and without a default) in the app's schema",
                        )
                    )
        return problems


def accepted(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if (p.where, p.keyword) not in ACCEPTED_DEVIATIONS]


def report(problems: list[Problem]) -> str:
    return "the gateway's OpenAPI differs from the upstream's:\n  " + "\n  ".join(map(str, problems))


# --- fixtures ------------------------------------------------------------------------------------------------


def build_app() -> FastAPI:
    settings = Settings(
        _env_file=None,
        upstream_base_url="http://upstream.test",
        secret_key="x" * 32,
        admin_token="y" * 32,
        database_url="postgresql+asyncpg://never-connected@127.0.0.1:9/none",
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def gateway_app() -> FastAPI:
    return build_app()


@pytest.fixture(scope="module")
def app_spec(gateway_app: FastAPI) -> Spec:
    return gateway_app.openapi()


@pytest.fixture(scope="module")
def upstream_spec() -> Spec:
    spec: Spec = yaml.safe_load(UPSTREAM_SPEC.read_text())
    return spec


@pytest.fixture(scope="module")
def app_doc(app_spec: Spec) -> Resolver:
    return Resolver(app_spec)


@pytest.fixture(scope="module")
def up_doc(upstream_spec: Spec) -> Resolver:
    return Resolver(upstream_spec)


# --- checks, shared by the real tests and the negative ones ---------------------------------------------------


def operation_problems(app: Resolver, up: Resolver) -> list[Problem]:
    app_ops = app.operations()
    return [
        Problem(key, "operation", "documented upstream, absent from the app")
        for key in up.operations()
        if key not in app_ops
    ]


def request_problems(app: Resolver, up: Resolver) -> list[Problem]:
    """Bodies and parameters of every shared operation, in the request direction."""
    cmp = Comparator(app, up)
    problems: list[Problem] = []
    app_ops = app.operations()
    for key, up_op in up.operations().items():
        app_op = app_ops.get(key)
        if app_op is None:
            continue
        up_body, app_body = up_op.get("requestBody"), app_op.get("requestBody")
        if up_body is not None:
            up_body, where = up.deref(up_body), f"{key} request body"
            if app_body is None:
                problems.append(Problem(where, "missing", "the app's operation takes no request body"))
                continue
            app_body = app.deref(app_body)
            if app_body.get("required") and not up_body.get("required"):
                problems.append(Problem(where, "required", "required by the app, optional upstream"))
            for media, content in up_body["content"].items():
                if media not in app_body.get("content", {}):
                    problems.append(
                        Problem(
                            where,
                            "content",
                            f"app does not accept {media} (it takes {sorted(app_body.get('content', {}))})",
                        )
                    )
                    continue
                problems += cmp.compare(app_body["content"][media]["schema"], content["schema"], where, "request")
        app_params = {(p["in"], p["name"]): p for p in map(app.deref, app_op.get("parameters", []))}
        for param in map(up.deref, up_op.get("parameters", [])):
            where = f"{key} {param['in']} parameter {param['name']}"
            mine = app_params.get((param["in"], param["name"]))
            if mine is None:
                problems.append(Problem(where, "missing", "absent from the app's operation"))
                continue
            if mine.get("required") and not param.get("required"):
                problems.append(Problem(where, "required", "required by the app, optional upstream"))
            problems += cmp.compare(mine.get("schema", {}), param.get("schema", {}), where, "request")
        for (location, name), mine in app_params.items():
            if mine.get("required") and not any(
                p["in"] == location and p["name"] == name for p in map(up.deref, up_op.get("parameters", []))
            ):
                problems.append(Problem(f"{key} {location} parameter {name}", "required", "unknown upstream"))
    return problems


def _error_statuses(op: Schema) -> Iterator[str]:
    return (status for status in op.get("responses", {}) if status[:1] in ("4", "5"))


def response_problems(app: Resolver, up: Resolver) -> list[Problem]:
    """Every response status both document, in the response direction (the task object included)."""
    cmp = Comparator(app, up)
    problems: list[Problem] = []
    app_ops = app.operations()
    for key, up_op in up.operations().items():
        app_op = app_ops.get(key)
        if app_op is None:
            continue
        for status in up_op["responses"]:
            if status not in app_op.get("responses", {}):
                continue  # presence is status_problems' business
            where = f"{key} {status} response"
            up_schema = up.json_schema(up.response(up_op, status))
            app_schema = app.json_schema(app.response(app_op, status))
            if up_schema is None:
                continue
            if app_schema is None:
                problems.append(Problem(where, "content", "the app documents no application/json body"))
                continue
            problems += cmp.compare(app_schema, up_schema, where, "response")
    return problems


def status_problems(app: Resolver, up: Resolver) -> list[Problem]:
    """Every documented upstream 4xx is documented by the app too.

    5xx are not required one for one: the gateway answers upstream trouble with 502/503/504 (style.md, habit 2).
    """
    problems: list[Problem] = []
    app_ops = app.operations()
    for key, up_op in up.operations().items():
        app_op = app_ops.get(key)
        if app_op is None:
            continue
        for status in _error_statuses(up_op):
            undocumented = up.response(up_op, status).get("x-undocumented")
            if status.startswith("4") and not undocumented and status not in app_op.get("responses", {}):
                problems.append(Problem(f"{key} {status} response", "missing", "documented upstream, not by the app"))
    return problems


def _fields(resolver: Resolver, node: Any, *path: str) -> set[str]:
    """Property names of the object at `path` inside `node`; "[]" steps into array items."""
    names: set[str] = set()
    for alt in resolver.alternatives(node):
        if path and path[0] == "[]":
            if alt["type"] == "array":
                names |= _fields(resolver, alt.get("items", {}), *path[1:])
        elif alt["type"] == "object":
            props = alt.get("properties", {})
            if not path:
                names |= set(props)
            elif path[0] in props:
                names |= _fields(resolver, props[path[0]], *path[1:])
    return names


def envelope_problems(app: Resolver) -> list[Problem]:
    """Every 4xx/5xx the app documents uses `{"error": {code, message, type, param}}` (uploads: their own envelope)."""
    problems: list[Problem] = []
    for key, op in app.operations().items():
        for status in _error_statuses(op):
            schema = app.json_schema(app.response(op, status))
            where = f"{key} {status} response"
            if schema is None:
                problems.append(Problem(where, "content", "no application/json body documented"))
                continue
            error_fields = _fields(app, schema, "error")
            if set(ERROR_FIELDS) <= error_fields:
                continue
            if key == "POST /v1/uploads/images" and set(UPLOAD_ENVELOPE_FIELDS) <= _fields(app, schema):
                continue
            title = app.deref(schema).get("title", schema)
            lacking = [f"error.{f}" for f in ERROR_FIELDS if f not in error_fields]
            problems.append(Problem(where, "envelope", f"schema {title!r} is not the error envelope (lacks {lacking})"))
    return problems


def security_problems(app: Resolver, up: Resolver) -> list[Problem]:
    """The app declares an HTTP bearer scheme and requires it wherever the upstream does."""
    schemes = app.spec.get("components", {}).get("securitySchemes", {})
    bearer = {
        name for name, s in schemes.items() if s.get("type") == "http" and str(s.get("scheme", "")).lower() == "bearer"
    }
    if not bearer:
        return [
            Problem(
                "components.securitySchemes",
                "security",
                f"the app declares no HTTP bearer scheme (it has {sorted(schemes)})",
            )
        ]
    problems: list[Problem] = []
    app_ops = app.operations()
    for key, up_op in up.operations().items():
        if key in app_ops and up_op.get("security"):
            used = {name for requirement in app_ops[key].get("security", []) for name in requirement}
            if not used & bearer:
                problems.append(Problem(key, "security", f"does not require the bearer scheme {sorted(bearer)}"))
    return problems


def all_problems(app_spec: Spec, upstream_spec: Spec) -> list[Problem]:
    app, up = Resolver(app_spec), Resolver(upstream_spec)
    return [
        *operation_problems(app, up),
        *request_problems(app, up),
        *response_problems(app, up),
        *status_problems(app, up),
        *envelope_problems(app),
        *security_problems(app, up),
    ]


# --- the real document ---------------------------------------------------------------------------------------


def test_upstream_document_is_openapi_31_and_every_ref_resolves(up_doc: Resolver) -> None:
    assert str(up_doc.spec["openapi"]).startswith("3.1"), "openapi/upstream.yaml must be OpenAPI 3.1"

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(up_doc.spec):
        up_doc.deref({"$ref": ref})  # raises KeyError naming the broken part


def test_same_operations(app_doc: Resolver, up_doc: Resolver) -> None:
    problems = operation_problems(app_doc, up_doc)
    assert not problems, report(problems)


def test_requests_accepted_at_least_as_liberally(app_doc: Resolver, up_doc: Resolver) -> None:
    problems = accepted(request_problems(app_doc, up_doc))
    assert not problems, report(problems)


def test_answers_fit_the_upstream_schemas(app_doc: Resolver, up_doc: Resolver) -> None:
    problems = accepted(response_problems(app_doc, up_doc))
    assert not problems, report(problems)


def test_task_object_has_every_upstream_property(app_doc: Resolver, up_doc: Resolver) -> None:
    for key in ("POST /v1/images/generations", "GET /v1/images/generations/{task_id}"):
        app_schema = app_doc.json_schema(app_doc.response(app_doc.operations()[key], "200"))
        up_schema = up_doc.json_schema(up_doc.response(up_doc.operations()[key], "200"))
        up_props = up_doc.deref(up_schema)["properties"]
        for path in ((), ("result",), ("result", "data", "[]"), ("error",)):
            wanted = _fields(up_doc, up_schema, *path)
            if not path:
                wanted = {name for name in wanted if not up_doc.deref(up_props[name]).get("x-undocumented")}
            missing = sorted(wanted - _fields(app_doc, app_schema, *path))
            where = ".".join(("task", *path)).replace(".[]", "[]")
            assert not missing, f"{key} 200: the app's {where} lacks {missing}"


def test_upstream_client_errors_are_documented(app_doc: Resolver, up_doc: Resolver) -> None:
    problems = status_problems(app_doc, up_doc)
    assert not problems, report(problems)


def test_error_responses_use_the_error_envelope(app_doc: Resolver) -> None:
    problems = envelope_problems(app_doc)
    assert not problems, report(problems)


def test_bearer_auth_is_declared(app_doc: Resolver, up_doc: Resolver) -> None:
    assert "bearerAuth" in up_doc.spec["components"]["securitySchemes"], "upstream.yaml lost its bearer scheme"
    problems = security_problems(app_doc, up_doc)
    assert not problems, report(problems)


def test_upload_file_part_takes_the_upstreams_image_types(app_doc: Resolver, up_doc: Resolver) -> None:
    def types(doc: Resolver) -> set[str]:
        body = doc.deref(doc.operations()["POST /v1/uploads/images"]["requestBody"])
        encoding = body["content"]["multipart/form-data"].get("encoding", {}).get("file", {})
        return {part.strip() for part in str(encoding.get("contentType", "")).split(",") if part.strip()}

    assert types(up_doc) == {"image/jpeg", "image/png", "image/webp", "image/gif"}
    assert types(app_doc) == types(up_doc)


def test_accepted_deviations_are_still_real(app_doc: Resolver, up_doc: Resolver) -> None:
    found = {(p.where, p.keyword) for p in request_problems(app_doc, up_doc) + response_problems(app_doc, up_doc)}
    stale = sorted(set(ACCEPTED_DEVIATIONS) - found)
    assert not stale, f"ACCEPTED_DEVIATIONS entries no longer needed (delete them): {stale}"


async def test_docs_are_served(gateway_app: FastAPI) -> None:
    # /docs and /openapi.json need no lifespan state.
    transport = httpx.ASGITransport(app=gateway_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        docs = await client.get("/docs")
        spec = await client.get("/openapi.json")
    assert docs.status_code == 200, f"/docs answered {docs.status_code}"
    assert "swagger-ui" in docs.text.lower(), "/docs is not the Swagger UI page"
    assert "/openapi.json" in docs.text, "/docs does not load /openapi.json"
    assert spec.status_code == 200, f"/openapi.json answered {spec.status_code}"
    assert spec.json()["paths"].keys() == gateway_app.openapi()["paths"].keys()


# --- the comparator can fail -----------------------------------------------------------------------------------


def _mini_spec(request: Schema, task: Schema, *, secured: bool = True) -> Spec:
    envelope = {"$ref": "#/components/schemas/Envelope"}
    spec: Spec = {
        "openapi": "3.1.0",
        "paths": {
            "/v1/things": {
                "post": {
                    "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                    "responses": {
                        "200": {"description": "ok", "content": {"application/json": {"schema": task}}},
                        "400": {"description": "bad", "content": {"application/json": {"schema": envelope}}},
                    },
                }
            }
        },
        "components": {
            "schemas": {
                "Envelope": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "object", "properties": {f: {"type": "string"} for f in ERROR_FIELDS}}
                    },
                }
            }
        },
    }
    if secured:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearer": []}]
    return spec


_REQUEST: Schema = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "maxLength": 1000},
        "size": {"type": "string", "enum": ["1:1", "16:9"], "default": "1:1"},
        "n": {"type": "integer", "minimum": 1, "maximum": 15},
        "metadata": {
            "type": "object",
            "properties": {
                "opts": {
                    "oneOf": [
                        {"type": "object", "properties": {"mode": {"type": "string", "enum": ["standard", "fast"]}}},
                        {"type": "string", "enum": ["standard", "fast"]},
                    ]
                }
            },
        },
    },
}
_TASK: Schema = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "completed"]},
        "url": {"type": "string"},
    },
}


def _mutated(path: list[str], change: Any, base: Schema) -> Schema:
    schema = copy.deepcopy(base)
    node = schema
    for part in path[:-1]:
        node = node[part]
    if change is None:
        del node[path[-1]]
    else:
        node[path[-1]] = change
    return schema


def test_identical_documents_compare_clean() -> None:
    spec = _mini_spec(_REQUEST, _TASK)
    assert all_problems(copy.deepcopy(spec), spec) == []


def test_nullable_anyof_and_refs_are_compatible() -> None:
    app = _mini_spec({"$ref": "#/components/schemas/Req"}, _TASK)
    nullable_n = {"anyOf": [{"type": "integer", "minimum": 1.0, "maximum": 15.0}, {"type": "null"}]}
    app["components"]["schemas"]["Req"] = _mutated(["properties", "n"], nullable_n, _REQUEST)
    assert all_problems(app, _mini_spec(_REQUEST, _TASK)) == []


@pytest.mark.parametrize(
    ("app_request", "app_task", "where", "keyword"),
    [
        pytest.param(
            _mutated(["properties", "size"], None, _REQUEST),
            _TASK,
            "POST /v1/things request body.size",
            "missing",
            id="removed-request-field",
        ),
        pytest.param(
            _mutated(["properties", "size", "enum"], ["1:1"], _REQUEST),
            _TASK,
            "POST /v1/things request body.size",
            "enum",
            id="narrowed-request-enum",
        ),
        pytest.param(
            _mutated(["properties", "n", "maximum"], 10, _REQUEST),
            _TASK,
            "POST /v1/things request body.n",
            "maximum",
            id="tighter-limit",
        ),
        pytest.param(
            _mutated(["properties", "n"], {"type": "string"}, _REQUEST),
            _TASK,
            "POST /v1/things request body.n",
            "type",
            id="changed-type",
        ),
        pytest.param(
            _mutated(["required"], ["prompt", "n"], _REQUEST),
            _TASK,
            "POST /v1/things request body.n",
            "required",
            id="newly-required",
        ),
        pytest.param(
            _mutated(["properties", "size", "default"], "16:9", _REQUEST),
            _TASK,
            "POST /v1/things request body.size",
            "default",
            id="changed-default",
        ),
        pytest.param(
            _mutated(
                ["properties", "metadata", "properties", "opts"],
                {"type": "object", "properties": {"mode": {"type": "string"}}},
                _REQUEST,
            ),
            _TASK,
            "POST /v1/things request body.metadata.opts",
            "type",
            id="dropped-oneof-reading",
        ),
        pytest.param(
            _REQUEST,
            _mutated(["properties", "url"], None, _TASK),
            "POST /v1/things 200 response.url",
            "missing",
            id="removed-task-property",
        ),
        pytest.param(
            _REQUEST,
            _mutated(["properties", "status", "enum"], ["queued", "done"], _TASK),
            "POST /v1/things 200 response.status",
            "enum",
            id="widened-task-enum",
        ),
        pytest.param(
            _REQUEST,
            _mutated(["required"], ["id"], _TASK),
            "POST /v1/things 200 response.status",
            "required",
            id="task-field-made-optional",
        ),
    ],
)
def test_comparator_detects(app_request: Schema, app_task: Schema, where: str, keyword: str) -> None:
    problems = all_problems(_mini_spec(app_request, app_task), _mini_spec(_REQUEST, _TASK))
    assert (where, keyword) in {(p.where, p.keyword) for p in problems}, report(problems)


def test_comparator_detects_missing_operation_security_and_envelope() -> None:
    app = _mini_spec(_REQUEST, _TASK, secured=False)
    app["paths"]["/v1/things"]["post"]["responses"]["400"]["content"]["application/json"]["schema"] = {
        "type": "object",
        "properties": {"detail": {"type": "array"}},
    }
    upstream = _mini_spec(_REQUEST, _TASK)
    upstream["paths"]["/v1/other"] = {"get": {"responses": {"200": {"description": "ok"}}}}
    found = {(p.where, p.keyword) for p in all_problems(app, upstream)}
    assert ("GET /v1/other", "operation") in found, found
    assert ("components.securitySchemes", "security") in found, found
    assert ("POST /v1/things 400 response", "envelope") in found, found
