"""Inputs PostgreSQL refuses, bodies without a length, and uploads that are no image.

Before: a NUL in a stored field was 500 (PostgreSQL refuses NUL in text), `%00` as a task id was 500, a chunked
2 MB body was 400 instead of 413, and HTML declared as image/png went upstream.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from app.models import Task
from tests.fixtures.gateway import ADMIN_TOKEN, Harness

URL = "/v1/images/generations"
UPLOAD = "/v1/uploads/images"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "blue").save(buffer, format="PNG")
    return buffer.getvalue()


async def task_count(gw: Harness) -> int:
    async with gw.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(Task))).scalar_one())


def assert_invalid(r: Any, param: str) -> None:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"
    assert error["param"] == param, error


# --- 1. text the ledger cannot store --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"client_business_id": "order\x007"}, "client_business_id"),
        ({"client_business_id": "order\x1b7"}, "client_business_id"),
        ({"client_business_id": "order\n7"}, "client_business_id"),
        ({"prompt": "a fox\x00at dawn"}, "prompt"),
        ({"prompt": "a fox\x07at dawn"}, "prompt"),
        ({"model": "doubao-seedream-4-0\x00"}, "model"),
        ({"image_urls": ["https://img.example/a\x00.png"]}, "image_urls"),
        ({"callback_url": "https://hooks.example/\x00"}, "callback_url"),
    ],
)
async def test_control_characters_in_stored_text_are_400_on_every_database(
    gw: Harness, fields: dict[str, Any], param: str
) -> None:
    key = await gw.new_tenant("acme")
    r = await gw.client.post(URL, headers=bearer(key), json={"prompt": "a fox", **fields})
    assert_invalid(r, param)
    assert await task_count(gw) == 0
    assert gw.sandbox_stats()["create"] == 0


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"prompt": "a fox", "client_business_id": "a\\u0000b"}', "client_business_id"),
        (b'{"prompt": "a fox", "client_business_id": "a\\ud800b"}', "client_business_id"),
        (b'{"prompt": "a fox\\udfff"}', "prompt"),
        (b'{"prompt": "a fox", "model": "\\ud83d"}', "model"),
        (b'{"prompt": "a fox", "image_urls": ["https://img.example/\\ud800"]}', "image_urls"),
    ],
)
async def test_escaped_nul_and_lone_surrogates_are_400_never_500(gw: Harness, raw: bytes, param: str) -> None:
    key = await gw.new_tenant("acme")
    r = await gw.client.post(URL, headers={**bearer(key), "Content-Type": "application/json"}, content=raw)
    assert_invalid(r, param)
    assert await task_count(gw) == 0


async def test_tabs_and_line_breaks_in_a_prompt_are_stored_and_echoed(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    prompt = "a fox\tat dawn\r\nwatercolor"
    r = await gw.client.post(URL, headers=bearer(key), json={"prompt": prompt, "client_business_id": "commande-été-7"})
    assert r.status_code == 200, r.text
    assert r.json()["client_business_id"] == "commande-été-7"
    async with gw.sessions() as session:
        row = (await session.execute(select(Task))).scalar_one()
    assert row.request["prompt"] == prompt and row.client_business_id == "commande-été-7"


@pytest.mark.parametrize(
    "task_id",
    ["%00", "task_img_%00", "abc%00def", "%C3%A9", "a%20b", "task.img", "x" * 49, "%F0%9F%98%80", "%0A"],
)
async def test_task_ids_that_cannot_exist_are_a_plain_404(gw: Harness, task_id: str) -> None:
    key = await gw.new_tenant("acme")
    missing = await gw.client.get(f"{URL}/task_img_does_not_exist", headers=bearer(key))
    r = await gw.client.get(f"{URL}/{task_id}", headers=bearer(key))
    assert r.status_code == 404, r.text
    assert r.json() == missing.json()
    assert r.json()["error"]["code"] == "task_not_found"


async def test_a_real_task_id_is_still_found(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    task = (await gw.client.post(URL, headers=bearer(key), json={"prompt": "a fox"})).json()
    r = await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))
    assert r.status_code == 200 and r.json()["id"] == task["id"]


@pytest.mark.parametrize(
    "path",
    [
        "/admin/v1/quota/drift?tenant_id=%00",
        "/admin/v1/quota/drift?tenant_id=ten_%00x",
        "/admin/v1/tenants/%00/limits",
        "/admin/v1/tenants/a%00b/usage",
    ],
)
async def test_admin_lookups_of_a_nul_are_a_plain_404(gw: Harness, path: str) -> None:
    r = await gw.client.get(path, headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 404, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]["code"] == "tenant_not_found"


# --- 2. bodies without a Content-Length -------------------------------------------------------------------------


async def chunks(payload: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


async def test_a_chunked_body_over_the_limit_is_413_like_a_declared_one(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    payload = b'{"prompt": "' + b"x" * 2_000_000 + b'"}'
    headers = {**bearer(key), "Content-Type": "application/json"}
    request = gw.client.build_request("POST", URL, headers=headers, content=chunks(payload))
    assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
    chunked = await gw.client.send(request)
    declared = await gw.client.post(URL, headers=headers, content=payload)
    assert chunked.status_code == declared.status_code == 413, chunked.text
    assert chunked.json() == declared.json()
    assert chunked.json()["error"]["code"] == "invalid_request"
    assert gw.sandbox_stats()["create"] == 0


async def test_a_chunked_body_within_the_limit_reaches_the_app_whole(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    payload = b'{"prompt": "' + b"a fox " * 150 + b'", "client_business_id": "chunked-1"}'
    request = gw.client.build_request(
        "POST", URL, headers={**bearer(key), "Content-Type": "application/json"}, content=chunks(payload, 100)
    )
    r = await gw.client.send(request)
    assert r.status_code == 200, r.text
    assert r.json()["client_business_id"] == "chunked-1"


def multipart(file: bytes, content_type: str = "image/png", boundary: str = "gw-test-boundary") -> tuple[bytes, str]:
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return body + file + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def test_chunked_uploads_over_10mb_are_413_in_the_upload_envelope(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    body, content_type = multipart(png() + b"\x00" * (11 * 1024 * 1024))
    headers = {**bearer(key), "Content-Type": content_type}
    chunked = await gw.client.send(gw.client.build_request("POST", UPLOAD, headers=headers, content=chunks(body)))
    declared = await gw.client.post(UPLOAD, headers=headers, content=body)
    for r in (chunked, declared):
        assert r.status_code == 413, r.text
        assert r.json() == {"success": False, "message": "Image too large. Maximum size is 10MB"}
    assert gw.sandbox_stats()["upload"] == 0


async def test_a_chunked_upload_within_the_limit_is_uploaded(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    image = png()
    body, content_type = multipart(image)
    request = gw.client.build_request(
        "POST", UPLOAD, headers={**bearer(key), "Content-Type": content_type}, content=chunks(body, 50)
    )
    r = await gw.client.send(request)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["size"] == len(image)


# --- 3. uploads ---------------------------------------------------------------------------------------------------


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (4, 4)).save(buffer, format="GIF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "declared"),
    [
        (b"<!doctype html><html><body>not an image</body></html>", "image/png"),
        (b"\x89PNG but not really", "image/png"),
        (b"%PDF-1.7\n", "image/jpeg"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "image/webp"),
        (b"hello", "text/plain"),
    ],
)
async def test_bytes_that_are_no_allowed_image_are_refused_locally(gw: Harness, content: bytes, declared: str) -> None:
    key = await gw.new_tenant("acme")
    r = await gw.client.post(UPLOAD, headers=bearer(key), files={"file": ("a.png", content, declared)})
    assert r.status_code == 400, r.text
    assert r.json()["success"] is False and "JPEG, PNG, WebP, GIF" in r.json()["message"]
    assert gw.sandbox_stats()["upload"] == 0


async def test_an_empty_file_is_refused_locally(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    r = await gw.client.post(UPLOAD, headers=bearer(key), files={"file": ("a.png", b"", "image/png")})
    assert r.status_code == 400
    assert r.json()["success"] is False and "empty" in r.json()["message"]
    assert gw.sandbox_stats()["upload"] == 0


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"--b\r\nNone--b--\r\n", "multipart/form-data; boundary=b"),
        (b"--b\r\nContent-Disposition: form-data; name=file\r\n", "multipart/form-data; boundary=b"),
        (b"not multipart at all", "multipart/form-data"),
        (b"file=abc", "application/x-www-form-urlencoded"),
        (b"{}", "application/json"),
    ],
)
async def test_bodies_that_are_no_multipart_upload_are_400_in_the_upload_envelope(
    gw: Harness, content: bytes, content_type: str
) -> None:
    key = await gw.new_tenant("acme")
    r = await gw.client.post(UPLOAD, headers={**bearer(key), "Content-Type": content_type}, content=content)
    assert r.status_code == 400, r.text
    assert r.json()["success"] is False and r.json()["message"]
    assert set(r.json()) == {"success", "message"}


async def test_a_field_sent_twice_is_400_not_the_last_one_silently(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    image = ("a.png", png(), "image/png")
    twice = [("file", image), ("purpose", (None, "generation")), ("purpose", (None, "other"))]
    r = await gw.client.post(UPLOAD, headers=bearer(key), files=twice)
    assert r.status_code == 400 and "'purpose'" in r.json()["message"], r.text
    r = await gw.client.post(UPLOAD, headers=bearer(key), files=[("file", image), ("file", image)])
    assert r.status_code == 400 and "'file'" in r.json()["message"], r.text
    assert gw.sandbox_stats()["upload"] == 0


async def test_the_bytes_decide_the_type_sent_and_reported(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    r = await gw.client.post(UPLOAD, headers=bearer(key), files={"file": ("a.jpg", gif(), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["mime_type"] == "image/gif"


async def test_uploads_count_against_the_submit_rate_in_a_window_of_their_own(gw: Harness) -> None:
    key = await gw.new_tenant("acme", submit_rpm=2)
    files = {"file": ("a.png", png(), "image/png")}
    first = await gw.client.post(UPLOAD, headers=bearer(key), files=files)
    second = await gw.client.post(UPLOAD, headers=bearer(key), files=files)
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-ratelimit-limit"], first.headers["x-ratelimit-remaining"]) == ("2", "1")
    third = await gw.client.post(UPLOAD, headers=bearer(key), files=files)
    assert third.status_code == 429, third.text
    assert third.json()["success"] is False and "rate" in third.json()["message"].lower()
    assert int(third.headers["retry-after"]) >= 1
    assert third.headers["x-ratelimit-remaining"] == "0"
    assert gw.sandbox_stats()["upload"] == 2
    # submits have their own window
    submit = await gw.client.post(URL, headers=bearer(key), json={"prompt": "a fox"})
    assert submit.status_code == 200, submit.text


async def test_a_refused_upload_still_carries_the_rate_headers(gw: Harness) -> None:
    key = await gw.new_tenant("acme", submit_rpm=5)
    r = await gw.client.post(UPLOAD, headers=bearer(key), files={"file": ("a.png", b"<html>", "image/png")})
    assert r.status_code == 400
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == ("5", "4")
