"""Browser origins (app/core/cors.py): one spelling per origin, and the API's schema pattern says exactly which
strings the rule takes (a schema-valid origin is never refused, anything else always is)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.cors import ANY_ORIGIN_PATTERN, ORIGIN_PATTERN, normalize_origin


@pytest.mark.parametrize(
    ("given_origin", "stored"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("HTTPS://App.Example.com:443/", "https://app.example.com"),
        ("http://example.com:80", "http://example.com"),
        ("https://example.com:080", "https://example.com:80"),
        ("http://localhost:65535", "http://localhost:65535"),
    ],
)
def test_an_origin_is_stored_as_browsers_send_it(given_origin: str, stored: str) -> None:
    assert normalize_origin(given_origin) == stored


@pytest.mark.parametrize(
    "refused",
    ["*", "null", "ftp://x", "http://x/y", "http://x?q", "http://u@x", "http://x:65536", "http://a..b", " http://x"],
)
def test_anything_else_is_refused(refused: str) -> None:
    with pytest.raises(ValueError):
        normalize_origin(refused)
    assert re.fullmatch(ORIGIN_PATTERN, refused) is None


def test_any_is_an_origin_only_where_asked() -> None:
    assert normalize_origin("*", allow_any=True) == "*"
    assert re.fullmatch(ANY_ORIGIN_PATTERN, "*") and not re.fullmatch(ORIGIN_PATTERN, "*")


@settings(max_examples=200, deadline=None)
@given(st.from_regex(ORIGIN_PATTERN, fullmatch=True))
def test_every_string_the_pattern_matches_is_taken(origin: str) -> None:
    stored = normalize_origin(origin)
    assert normalize_origin(stored) == stored
