"""parse_task: every documented (and seen-in-the-wild) variant of the upstream's task object."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.errors import UpstreamUnavailable
from app.upstream.base import UpstreamTask
from app.upstream.toapis import parse_task


def task(**fields: Any) -> dict[str, Any]:
    return {"id": "img_5b8b", "object": "generation.task", "model": "doubao-seedream-4-0", **fields}


# --- status ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("pending", "queued"),
        ("submitted", "queued"),
        ("queued", "queued"),
        ("in_progress", "in_progress"),
        ("completed", "completed"),
        ("failed", "failed"),
        ("QUEUED", "queued"),
        ("Completed", "completed"),
        ("SUCCESS", "completed"),
        ("FAILURE", "failed"),
    ],
)
def test_documented_statuses_map_onto_the_contract(raw: str, status: str) -> None:
    assert parse_task(task(status=raw, progress=0)).status == status


@pytest.mark.parametrize("raw", ["rendering", "weird", "cancelled?"])
def test_unknown_status_is_read_as_in_progress(raw: str) -> None:
    assert parse_task(task(status=raw)).status == "in_progress"


@pytest.mark.parametrize("raw", [None, ""])
def test_missing_status_is_read_as_queued(raw: Any) -> None:
    payload = task() if raw is None else task(status=raw)
    assert parse_task(payload).status == "queued"


# --- result URLs ----------------------------------------------------------------------------------------


def test_completed_task_with_result_data() -> None:
    parsed = parse_task(
        task(
            client_business_id="order_20260428_001",
            status="completed",
            progress=100,
            created_at=1768381010,
            completed_at=1768381063,
            expires_at=1768467463,
            result={
                "type": "image",
                "data": [{"url": "https://files.example/generated/1.jpg"}, {"url": "https://files.example/2.jpg"}],
            },
        )
    )
    assert parsed == UpstreamTask(
        id="img_5b8b",
        status="completed",
        progress=100,
        urls=["https://files.example/generated/1.jpg", "https://files.example/2.jpg"],
        created_at=1768381010,
        completed_at=1768381063,
        expires_at=1768467463,
    )


def test_top_level_url_is_read() -> None:
    parsed = parse_task(task(status="completed", url="https://files.example/only.jpg"))
    assert parsed.urls == ["https://files.example/only.jpg"]


def test_top_level_images_are_read() -> None:
    images = [{"url": "https://files.example/a.jpg"}, {"url": "https://files.example/b.jpg"}]
    assert parse_task(task(status="completed", images=images)).urls == [
        "https://files.example/a.jpg",
        "https://files.example/b.jpg",
    ]


def test_result_data_wins_over_top_level_url() -> None:
    parsed = parse_task(
        task(
            status="completed",
            url="https://files.example/1.jpg",
            result={"data": [{"url": "https://files.example/1.jpg"}, {"url": "https://files.example/2.jpg"}]},
        )
    )
    assert parsed.urls == ["https://files.example/1.jpg", "https://files.example/2.jpg"]


def test_empty_result_data_falls_back_to_images() -> None:
    parsed = parse_task(
        task(status="completed", result={"type": "image", "data": []}, images=[{"url": "https://f.example/x.jpg"}])
    )
    assert parsed.urls == ["https://f.example/x.jpg"]


def test_malformed_entries_are_skipped() -> None:
    data = [{"url": ""}, "https://f.example/str.jpg", {"b64_json": "AAAA"}, {"url": "https://f.example/ok.jpg"}]
    assert parse_task(task(status="completed", result={"data": data})).urls == ["https://f.example/ok.jpg"]


@pytest.mark.parametrize("result", [None, {}, {"data": None}, "oops"])
def test_no_urls_when_there_is_no_result(result: Any) -> None:
    assert parse_task(task(status="in_progress", result=result)).urls == []


# --- errors ---------------------------------------------------------------------------------------------


def test_failed_task_with_string_error_code() -> None:
    parsed = parse_task(
        task(
            status="failed",
            progress=0,
            error={"code": "generation_failed", "message": "call upstream API failed: upstream returned status 422"},
        )
    )
    assert parsed.status == "failed"
    assert parsed.error_code == "generation_failed"
    assert parsed.error_message == "call upstream API failed: upstream returned status 422"
    assert parsed.urls == []


def test_numeric_error_code_becomes_a_string() -> None:
    parsed = parse_task(task(status="failed", error={"code": 404, "message": "Task not found"}))
    assert parsed.error_code == "404"
    assert parsed.error_message == "Task not found"


def test_error_without_code_or_message() -> None:
    parsed = parse_task(task(status="failed", error={}))
    assert (parsed.error_code, parsed.error_message) == (None, None)


def test_null_error_means_no_error() -> None:
    parsed = parse_task(task(status="completed", error=None))
    assert (parsed.error_code, parsed.error_message) == (None, None)


# --- progress -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "progress"),
    [
        (50, 50),
        (0, 0),
        (42.7, 42),
        ("50%", 50),
        ("75", 75),
        (" 30 %", 30),
        ("12.5%", 12),
        (None, 0),
        ("abc", 0),
        (150, 100),
        (-5, 0),
        ("nan", 0),
    ],
)
def test_progress_is_read_as_a_clamped_integer(raw: Any, progress: int) -> None:
    assert parse_task(task(status="in_progress", progress=raw)).progress == progress


def test_completed_task_reports_full_progress() -> None:
    assert parse_task(task(status="completed", progress=0)).progress == 100
    assert parse_task(task(status="SUCCESS", progress="99%")).progress == 100


@pytest.mark.parametrize("raw", ["inf", float("inf"), float("-inf"), "1e400"])
def test_infinite_progress_does_not_crash(raw: Any) -> None:
    # json.loads reads `Infinity` and `1e400` as float inf: an odd upstream body must not become a 500.
    progress = parse_task(task(status="in_progress", progress=raw)).progress
    assert 0 <= progress <= 100


def test_infinite_timestamp_does_not_crash() -> None:
    assert parse_task(task(status="queued", created_at=float("inf"))).created_at is None


# --- timestamps and id ----------------------------------------------------------------------------------


def test_timestamps_are_integers_or_none() -> None:
    parsed = parse_task(task(status="queued", created_at="1703884800", completed_at=None, expires_at="soon"))
    assert (parsed.created_at, parsed.completed_at, parsed.expires_at) == (1703884800, None, None)


def test_task_id_field_is_accepted_as_the_id() -> None:
    payload = {"task_id": "tsk_01abcdef", "status": "queued"}
    assert parse_task(payload).id == "tsk_01abcdef"


@pytest.mark.parametrize("payload", [{}, {"status": "queued"}, {"id": ""}, {"id": None}, {"id": 12345}])
def test_missing_or_invalid_id_is_an_upstream_failure(payload: dict[str, Any]) -> None:
    with pytest.raises(UpstreamUnavailable) as info:
        parse_task(payload)
    assert info.value.status_code == 502
