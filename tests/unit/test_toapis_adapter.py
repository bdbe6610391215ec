"""ToAPIsAdapter over HTTP (respx-mocked): headers, bodies, and how each upstream failure is classified."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx

from app.core.errors import UpstreamCredentialsRefused, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from app.upstream.base import UploadedFile, UploadRefused
from app.upstream.toapis import ToAPIsAdapter, build_http_client, build_transport

BASE = "http://up.test"
KEY = "up-key-123"
UA = "seedream-gateway-test/9.9"
CREATED = {
    "id": "task_img_abc123def456",
    "object": "generation.task",
    "model": "doubao-seedream-4-0",
    "status": "queued",
    "progress": 0,
    "created_at": 1703884800,
    "metadata": {},
}
CREATE_BODY = {
    "model": "doubao-seedream-4-0",
    "prompt": "a red fox",
    "size": "16:9",
    "n": 2,
    "metadata": {"resolution": "4K", "sequential_image_generation": "auto"},
}


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False, assert_all_mocked=True) as router:
        yield router


@pytest.fixture
async def adapter(mock: respx.MockRouter) -> AsyncIterator[ToAPIsAdapter]:
    transport = httpx.AsyncHTTPTransport()  # respx cannot intercept the default aiohttp transport
    client = build_http_client(BASE + "/", user_agent=UA, timeout_s=5.0, connect_timeout_s=1.0, transport=transport)
    adapter = ToAPIsAdapter(client, transport)
    yield adapter
    await adapter.aclose()


# --- create / get ---------------------------------------------------------------------------------------


async def test_create_sends_user_agent_bearer_and_the_body(mock: respx.MockRouter, adapter: ToAPIsAdapter) -> None:
    route = mock.post("/v1/images/generations").respond(200, json=CREATED)

    task = await adapter.create(KEY, CREATE_BODY)

    assert route.call_count == 1
    request = route.calls.last.request
    assert request.url == BASE + "/v1/images/generations"
    assert request.headers["User-Agent"] == UA
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == CREATE_BODY
    assert (task.id, task.status, task.progress) == ("task_img_abc123def456", "queued", 0)


async def test_get_reads_the_task(mock: respx.MockRouter, adapter: ToAPIsAdapter) -> None:
    route = mock.get("/v1/images/generations/img_5b8b").respond(
        200,
        json={
            "id": "img_5b8b",
            "status": "completed",
            "progress": 100,
            "result": {"type": "image", "data": [{"url": "https://files.example/1.jpg"}]},
        },
    )

    task = await adapter.get(KEY, "img_5b8b")

    assert route.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"
    assert route.calls.last.request.headers["User-Agent"] == UA
    assert task.status == "completed"
    assert task.urls == ["https://files.example/1.jpg"]


# --- 4xx: passed through --------------------------------------------------------------------------------


async def test_4xx_is_rejected_with_status_envelope_and_rate_limit_headers(
    mock: respx.MockRouter, adapter: ToAPIsAdapter
) -> None:
    envelope = {"error": {"code": "rate_limit_exceeded", "message": "Async task request rate exceeded"}}
    mock.post("/v1/images/generations").respond(
        429,
        json=envelope,
        headers={
            "Retry-After": "7",
            "X-RateLimit-Limit": "300",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "1703884860",
            "X-Upstream-Internal": "secret-node-7",
        },
    )

    with pytest.raises(UpstreamRejected) as info:
        await adapter.create(KEY, CREATE_BODY)

    error = info.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.message == "Async task request rate exceeded"
    assert error.body() == envelope
    assert {k.lower(): v for k, v in error.headers.items()} == {
        "retry-after": "7",
        "x-ratelimit-limit": "300",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "1703884860",
    }


async def test_4xx_keeps_the_rate_limit_category_header(mock: respx.MockRouter, adapter: ToAPIsAdapter) -> None:
    # The contract lists X-RateLimit-Category (async_submit|async_query) among the rate-limit headers.
    mock.post("/v1/images/generations").respond(
        429,
        json={"error": {"code": "rate_limit_exceeded", "message": "slow down"}},
        headers={"Retry-After": "1", "X-RateLimit-Category": "async_submit"},
    )

    with pytest.raises(UpstreamRejected) as info:
        await adapter.create(KEY, CREATE_BODY)

    assert {k.lower(): v for k, v in info.value.headers.items()}.get("x-ratelimit-category") == "async_submit"


async def test_4xx_envelope_with_param_and_type(mock: respx.MockRouter, adapter: ToAPIsAdapter) -> None:
    envelope = {
        "error": {
            "code": "invalid_request",
            "message": "The 'prompt' field is required.",
            "param": "prompt",
            "type": "invalid_request_error",
        }
    }
    mock.post("/v1/images/generations").respond(400, json=envelope)

    with pytest.raises(UpstreamRejected) as info:
        await adapter.create(KEY, {"model": "doubao-seedream-4-0"})

    assert (info.value.status_code, info.value.param, info.value.type) == (400, "prompt", "invalid_request_error")
    assert info.value.body() == envelope
    assert info.value.headers == {}


async def test_404_with_numeric_code(mock: respx.MockRouter, adapter: ToAPIsAdapter) -> None:
    envelope = {"error": {"code": 404, "message": "Task not found", "type": "not_found_error"}}
    mock.get("/v1/images/generations/img_missing").respond(404, json=envelope)

    with pytest.raises(UpstreamRejected) as info:
        await adapter.get(KEY, "img_missing")

    assert (info.value.status_code, info.value.code) == (404, 404)
    assert info.value.body() == envelope


async def test_4xx_without_json_gets_a_synthesised_envelope(mock: respx.MockRouter, adapter: ToAPIsAdapter) -> None:
    mock.post("/v1/images/generations").respond(400, text="<html>Bad Request</html>")

    with pytest.raises(UpstreamRejected) as info:
        await adapter.create(KEY, CREATE_BODY)

    assert info.value.status_code == 400
    assert info.value.body() == {"error": {"code": "upstream_rejected", "message": "Upstream refused the request"}}


@pytest.mark.parametrize("status", [401, 403])
async def test_upstream_refusing_our_key_is_never_the_callers_401(
    mock: respx.MockRouter, adapter: ToAPIsAdapter, status: int
) -> None:
    mock.post("/v1/images/generations").respond(status, json={"error": {"code": "unauthorized", "message": "x"}})

    with pytest.raises(UpstreamCredentialsRefused) as info:
        await adapter.create(KEY, CREATE_BODY)

    assert (info.value.status_code, info.value.code) == (502, "upstream_auth_failed")


# --- 5xx and transport failures -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_upstream_unavailable(mock: respx.MockRouter, adapter: ToAPIsAdapter, status: int) -> None:
    mock.post("/v1/images/generations").respond(
        status, json={"error": {"code": "internal_error", "message": "boom"}}, headers={"Retry-After": "3"}
    )

    with pytest.raises(UpstreamUnavailable) as info:
        await adapter.create(KEY, CREATE_BODY)

    assert info.value.status_code == 502
    assert info.value.code == "upstream_error"
    assert str(status) in info.value.message


@pytest.mark.parametrize("exc", [httpx.ReadTimeout, httpx.WriteTimeout])
async def test_timeouts_after_sending_are_upstream_timeout(
    mock: respx.MockRouter, adapter: ToAPIsAdapter, exc: type[httpx.TimeoutException]
) -> None:
    mock.get("/v1/images/generations/img_1").mock(side_effect=exc)

    with pytest.raises(UpstreamTimeout) as info:
        await adapter.get(KEY, "img_1")

    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectTimeout, httpx.PoolTimeout]
)
async def test_network_errors_are_upstream_unavailable(
    mock: respx.MockRouter, adapter: ToAPIsAdapter, exc: type[httpx.TransportError]
) -> None:
    mock.post("/v1/images/generations").mock(side_effect=exc)

    with pytest.raises(UpstreamUnavailable) as info:
        await adapter.create(KEY, CREATE_BODY)

    assert info.value.status_code == 502
    assert exc.__name__ in info.value.message


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>maintenance</html>"),
        httpx.Response(200, content=b""),
        httpx.Response(200, content=b"\xff\xfe\xfa", headers={"Content-Type": "application/json"}),
        httpx.Response(200, json=["task_img_1"]),
        httpx.Response(200, json={"status": "queued"}),
    ],
    ids=["html", "empty", "undecodable", "json-list", "no-id"],
)
async def test_200_with_an_unusable_body_is_upstream_unavailable(
    mock: respx.MockRouter, adapter: ToAPIsAdapter, response: httpx.Response
) -> None:
    mock.post("/v1/images/generations").mock(return_value=response)

    with pytest.raises(UpstreamUnavailable) as info:
        await adapter.create(KEY, CREATE_BODY)

    assert info.value.status_code == 502


# --- uploads --------------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def test_upload_success(mock: respx.MockRouter, adapter: ToAPIsAdapter) -> None:
    route = mock.post("/v1/uploads/images").respond(
        200,
        json={
            "success": True,
            "message": "",
            "data": {
                "id": "upload_abc12345",
                "url": "https://files.example/uploads/1.jpg",
                "mime_type": "image/png",
                "size": 89234,
            },
        },
    )

    uploaded = await adapter.upload(KEY, "fox.png", PNG, "image/png", "generation")

    assert uploaded == UploadedFile(
        id="upload_abc12345", url="https://files.example/uploads/1.jpg", mime_type="image/png", size=89234
    )
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["User-Agent"] == UA
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'name="file"; filename="fox.png"' in request.content
    assert b"Content-Type: image/png" in request.content
    assert PNG in request.content
    assert b'name="purpose"' in request.content
    assert b"generation" in request.content


async def test_upload_without_mime_or_size_falls_back_to_what_was_sent(
    mock: respx.MockRouter, adapter: ToAPIsAdapter
) -> None:
    mock.post("/v1/uploads/images").respond(
        200, json={"success": True, "data": {"id": "upload_1", "url": "https://files.example/u.png"}}
    )

    uploaded = await adapter.upload(KEY, "fox.png", PNG, "image/png", "generation")

    assert (uploaded.mime_type, uploaded.size) == ("image/png", len(PNG))


async def test_upload_refused_with_success_false(mock: respx.MockRouter, adapter: ToAPIsAdapter) -> None:
    mock.post("/v1/uploads/images").respond(
        200, json={"success": False, "message": "Image too large. Maximum size is 10MB"}
    )

    with pytest.raises(UploadRefused) as info:
        await adapter.upload(KEY, "big.png", PNG, "image/png", "generation")

    assert info.value.status_code == 400
    assert info.value.message == "Image too large. Maximum size is 10MB"


async def test_upload_refused_keeps_a_4xx_status(mock: respx.MockRouter, adapter: ToAPIsAdapter) -> None:
    mock.post("/v1/uploads/images").respond(
        413, json={"success": False, "message": "Image too large. Maximum size is 10MB"}
    )

    with pytest.raises(UploadRefused) as info:
        await adapter.upload(KEY, "big.png", PNG, "image/png", "generation")

    assert (info.value.status_code, info.value.message) == (413, "Image too large. Maximum size is 10MB")


async def test_upload_5xx_is_upstream_unavailable(mock: respx.MockRouter, adapter: ToAPIsAdapter) -> None:
    mock.post("/v1/uploads/images").respond(503, text="down")

    with pytest.raises(UpstreamUnavailable):
        await adapter.upload(KEY, "fox.png", PNG, "image/png", "generation")


async def test_upload_200_with_a_non_json_body_is_upstream_unavailable(
    mock: respx.MockRouter, adapter: ToAPIsAdapter
) -> None:
    # A garbled 200 is the upstream's fault (502, like create/get), not a refusal of the caller's file (400).
    mock.post("/v1/uploads/images").respond(200, text="<html>maintenance</html>")

    with pytest.raises(UpstreamUnavailable):
        await adapter.upload(KEY, "fox.png", PNG, "image/png", "generation")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ReadTimeout, UpstreamTimeout),
        (httpx.ConnectTimeout, UpstreamTimeout),
        (httpx.ConnectError, UpstreamUnavailable),
    ],
)
async def test_upload_transport_failures(
    mock: respx.MockRouter, adapter: ToAPIsAdapter, exc: type[httpx.TransportError], expected: type[Exception]
) -> None:
    mock.post("/v1/uploads/images").mock(side_effect=exc)

    with pytest.raises(expected):
        await adapter.upload(KEY, "fox.png", PNG, "image/png", "generation")


# --- the client itself ----------------------------------------------------------------------------------


async def test_build_http_client_defaults() -> None:
    client = build_http_client(
        "http://up.test/", user_agent=UA, timeout_s=12.0, connect_timeout_s=2.0, transport=build_transport(3)
    )
    try:
        assert str(client.base_url) == "http://up.test"  # no trailing slash, no double slash in paths
        assert client.headers["User-Agent"] == UA
        assert client.headers["Accept"] == "application/json"
        assert client.timeout.read == 12.0
        assert client.timeout.connect == 2.0
        assert client.timeout.pool == 2.0
    finally:
        await client.aclose()
