"""Schemathesis against the whole gateway, every check, every operation (admin included).

The OpenAPI document is the gateway's own (what `/openapi.json` serves, read once at import: it needs no database);
the requests go in-process (ASGI) to a fresh gateway per test, built as tests/fixtures/gateway.py builds it, in
front of the in-process sandbox upstream, with a tenant key on the public routes and the admin token on the ops API
(schemathesis sends them per security scheme). Schemathesis generates schema-valid and schema-violating requests
(examples, coverage and fuzzing phases) and checks every answer: no 5xx, only documented statuses, content types
and headers, bodies that fit the documented schemas, schema-valid requests accepted and schema-violating ones
refused, auth not ignored, `Allow` matching the documented methods. A finding means the document and the gateway
disagree: fix one of them, never this test.

Size: `MAX_EXAMPLES` per operation in the fuzzing phase (the coverage phase adds its own fixed set of boundary
cases), derandomized (the same requests on every run, so a failure reproduces), no deadline and no health checks (a
busy CI machine makes neither flaky). About 100 s for the file on one core: 35 operations on two databases, some
2,900 cases per database at ~20 ms each, most of it schemathesis's and hypothesis's generation and the checks (a
fresh gateway per test costs ~0.1 s); the two stateful workflows ~7 s each.

Two notes on schemathesis 4.32 under pytest 9: its lazy `schemathesis.pytest.from_fixture` loader fails
(`Function._nodeid`), hence a schema read at import and the app handed to each call; and its plugin cannot report
a strict xfail that passes (INTERNALERROR), so a finding is fixed rather than marked.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.core.mutations import OperatorKind
from schemathesis.core.parameters import ParameterLocation
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
)

from app.contract import UPLOAD_MIME_TYPES
from app.core.clock import utcnow
from app.core.config import Settings
from app.core.db.engine import create_engine, create_session_factory
from app.core.security import KeyMaterial
from app.main import create_app
from app.sandbox.app import create_sandbox_app
from app.sandbox.config import SandboxConfig
from app.tenants.service import TenantService
from tests.fixtures import gateway as harness
from tests.fixtures.databases import truncate_all
from tests.support.served import served_in_thread

# Longer runs: GATEWAY_FUZZ_MAX_EXAMPLES=500 GATEWAY_FUZZ_SEED=<n> .venv/bin/pytest tests/test_api_fuzz.py -n 0
MAX_EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_MAX_EXAMPLES", "50"))
SEED = os.environ.get("GATEWAY_FUZZ_SEED")


def _document() -> dict[str, Any]:
    """The gateway's OpenAPI document (static: it needs no database)."""
    settings = Settings(
        _env_file=None,
        upstream_base_url="http://upstream.test",
        secret_key="x" * 32,
        admin_token="y" * 32,
        database_url="postgresql+asyncpg://never-connected@127.0.0.1:9/none",
    )
    return create_app(settings).openapi()


# The upload's file part is documented as one of the four image types (multipart `encoding.contentType`): these
# strategies give schemathesis real images of each, as the document asks for.
_IMAGE_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF"}
assert set(_IMAGE_FORMATS) == UPLOAD_MIME_TYPES


@st.composite
def _image(draw: st.DrawFn, image_format: str) -> bytes:
    size = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    color = draw(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)))
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=image_format)
    return buffer.getvalue()


for _media_type, _format in _IMAGE_FORMATS.items():
    schemathesis.openapi.media_type(_media_type, _image(_format))

TENANT_KEY = "sk-gw-fuzz-0123456789abcdefghijklmnopqrstuvwxyz"
CONFIG = schemathesis.Config.from_dict(
    {
        # Schemathesis sends the credentials itself, per security scheme, so it knows which requests carry them.
        "auth": {"openapi": {"TenantKey": {"bearer": TENANT_KEY}, "AdminToken": {"bearer": harness.ADMIN_TOKEN}}},
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": SEED is None, "database": "none"},
        **({"seed": int(SEED)} if SEED is not None else {}),
    }
)
schema = schemathesis.openapi.from_dict(_document(), config=CONFIG)


async def _new_tenant(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        tenants = TenantService(create_session_factory(engine), KeyMaterial(harness.SECRET_KEY), utcnow)
        await tenants.create("fuzz", key=TENANT_KEY)
    finally:
        await engine.dispose()


@pytest.fixture
def gateway(database_url: str) -> Iterator[FastAPI]:
    """A fresh gateway per operation and database (so no operation sees another's tenants, tasks or limits)."""
    asyncio.run(_new_tenant(database_url))
    sandbox = create_sandbox_app(SandboxConfig(task_seconds=10, queue_seconds=1, seed=7))
    # Schemathesis runs the app's lifespan in its own event loop thread: the sandbox gets a thread of its own.
    with served_in_thread(sandbox) as sandbox_url:
        app = create_app(harness.test_settings(database_url, upstream_base_url=sandbox_url))
        try:
            yield app
        finally:
            # End the app's lifespan with the test, before its sandbox.
            schemathesis_asgi.shutdown_lifespans()


def _type_change_lost_in_a_form(case: Any) -> bool:
    """A negative case whose only violation is a text form field's value generated as another JSON type.

    Every multipart value is text on the wire: `purpose=12.5` is the string "12.5", an object is its JSON text,
    a one-element array is one part, null or an empty array no part at all (the default). All schema-valid.
    Schemathesis knows this for path and query parameters but not (4.32) for form bodies; such a case is checked
    like any other, except for the rule that it must be refused. (Two or more parts of one field are a real
    violation, and the gateway refuses them.)
    """
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative or case.media_type != "multipart/form-data":
        return False
    if any(c.mode.is_negative for loc, c in meta.components.items() if loc != ParameterLocation.BODY):
        return False
    mutations = getattr(meta.phase.data, "mutations", None)
    body = getattr(case.body, "body", case.body)
    if not mutations or not isinstance(body, dict):
        return False
    return all(
        m.operator == OperatorKind.CHANGE_TYPE
        and m.parameter_location == ParameterLocation.BODY
        and m.original_value == "string"
        and m.schema_pointer.startswith("/properties/")
        and _one_text_part(body.get(m.schema_pointer.removeprefix("/properties/")))
        for m in mutations
    )


def _one_text_part(value: object) -> bool:
    return not isinstance(value, list) or len(value) <= 1


@schema.parametrize()
@settings(suppress_health_check=list(HealthCheck), deadline=None, database=None)
def test_the_gateway_answers_as_its_openapi_document_says(case: Any, gateway: FastAPI) -> None:
    case.operation.schema.app = gateway  # the probes some checks send (auth, methods) go to the same app
    excluded = [negative_data_rejection] if _type_change_lost_in_a_form(case) else []
    case.call_and_validate(app=gateway, excluded_checks=excluded)


def test_workflows_create_then_read_a_task(gateway: FastAPI, database_url: str) -> None:
    """Stateful: sequences of calls along the links schemathesis infers (a created task's `id` is the status
    call's `task_id`), with the checks that need them (a created task can be read, ...). Every sequence starts
    from the same state (an emptied database with the fuzz tenant, a fresh gateway): hypothesis replays and
    mutates sequences, and a replayed sequence must get the same answers (a second `POST /admin/v1/tenants` of one
    name is a 409, a deleted tenant's key a 401)."""
    apps = [gateway]
    sandboxes = ExitStack()

    def fresh_gateway() -> FastAPI:
        schemathesis_asgi.shutdown_lifespans()
        truncate_all(database_url)
        asyncio.run(_new_tenant(database_url))
        sandbox = create_sandbox_app(SandboxConfig(task_seconds=10, queue_seconds=1, seed=7))
        sandbox_url = sandboxes.enter_context(served_in_thread(sandbox))
        app = create_app(harness.test_settings(database_url, upstream_base_url=sandbox_url))
        schema.app = app
        return app

    schema.app = gateway
    try:
        # The task contract's links only: sequences through the ops API (names taken, keys and upstream keys added,
        # audit rows) made hypothesis see "inconsistent data generation" on replays in a worker that had run other
        # tests first; the ops API is covered operation by operation above.
        # The event stream of a created task lasts as long as the task (10 s of real time here), so it is left out
        # of the sequences (a few dozen calls); it is run operation by operation above, where every id is unknown.
        workflow = (
            schema.include(path_regex="^/v1/images/generations").exclude(path_regex="/events$").as_state_machine()
        )

        class Workflow(workflow):  # type: ignore[misc, valid-type]
            def setup(self) -> None:
                apps[0] = fresh_gateway()

            def get_call_kwargs(self, case: Any) -> dict[str, Any]:
                return {"app": apps[0]}

        Workflow.run(
            settings=settings(
                max_examples=max(MAX_EXAMPLES // 3, 5),
                stateful_step_count=6,
                derandomize=SEED is None,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
        )
    finally:
        schema.app = None
        schemathesis_asgi.shutdown_lifespans()  # the sequences' gateways, before their sandboxes
        sandboxes.close()
