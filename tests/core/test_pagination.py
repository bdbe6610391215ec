"""The pagination kit: one limit rule, one cursor codec, one page shape."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from app.core.errors import InvalidRequest
from app.core.ids import new_id
from app.core.pagination import MAX_PAGE, Cursor, Page, page_limit


@dataclass
class Row:
    id: str


class RowList(Page[str]):
    pass


def test_the_limit_rule_refuses_instead_of_clamping() -> None:
    assert page_limit(1) == 1 and page_limit(MAX_PAGE) == MAX_PAGE
    for limit in (0, -1, MAX_PAGE + 1):
        with pytest.raises(InvalidRequest) as refused:
            page_limit(limit)
        assert refused.value.param == "limit" and refused.value.status_code == 400
    assert page_limit(500, maximum=500) == 500


def test_a_cursor_names_a_key_of_its_own_list_only() -> None:
    tenants, keys = Cursor.of_ids("ten_"), Cursor.of_ids("key_")
    tenant = new_id("ten_")
    assert tenants.decode(tenants.encode(tenant)) == tenant and tenants.decode(None) is None
    for bad in (new_id("key_"), "ten_", "ten_XYZ", "ten_" + "0" * 41, " " + tenant, tenant + "\n", "ten_0\x00"):
        with pytest.raises(InvalidRequest) as refused:
            tenants.decode(bad)
        assert refused.value.param == "cursor"
    assert keys.decode(new_id("key_")) is not None
    serials = Cursor.of_serials()
    assert serials.decode("123") == "123"
    with pytest.raises(InvalidRequest):
        serials.decode("1" * 19)


def test_the_published_pattern_is_the_one_decoded_with() -> None:
    """What the OpenAPI document allows is exactly what the list accepts (the fuzz test sends what it allows)."""
    for cursor in (Cursor.of_ids("ten_"), Cursor.of_ids("task_img_"), Cursor.of_serials()):
        for text in ("ten_0a", "task_img_ff", "42", "ten_0A", "", "x" * 60, "9" * 18):
            published = re.search(cursor.pattern, text) is not None and len(text) <= cursor.max_chars
            try:
                cursor.decode(text)
                accepted = True
            except InvalidRequest:
                accepted = False
            assert published == accepted, (cursor, text)


def test_a_page_reads_one_row_more_than_it_shows() -> None:
    request = Cursor.of_ids("ten_").request(2, None)
    assert request.fetch == 3
    rows = [Row("ten_01"), Row("ten_02"), Row("ten_03")]
    page = RowList.of(rows, request, lambda r: r.id)
    assert (page.object, page.data, page.next_cursor) == ("list", ["ten_01", "ten_02"], "ten_02")
    last = RowList.of(rows[:2], request, lambda r: r.id)
    assert last.next_cursor is None
    assert RowList.of([], request, lambda r: r.id).model_dump() == {"object": "list", "data": [], "next_cursor": None}
