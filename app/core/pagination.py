"""One way to answer a list, as Polar's kit/pagination: a `Page[T]`, one limit rule, one cursor codec.

Every list of the ops API (and of the command line, which calls the same services) is keyset-paginated: rows in
the order of their id (ids are time-sortable), `limit` of them (1 to `MAX_PAGE`, else a 400: never clamped), after
the row the cursor names; one row more is read to know whether another page follows. Callers treat a cursor as
opaque ("pass the previous page's `next_cursor`"); only `Cursor` knows it is the key of the last row shown, and each
list says once which keys it holds, so a cursor made up or taken from another list is a 400 before any query. The
pattern a list publishes in its OpenAPI parameter is the one it decodes with: a cursor the document allows is a
cursor the list accepts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, Self, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from app.contract import ErrorEnvelope
from app.core.errors import InvalidRequest

DEFAULT_PAGE = 50
MAX_PAGE = 200

T = TypeVar("T")
R = TypeVar("R", bound="Keyed")

# What a list answers besides its page when the limit or the cursor is refused (the contract's error shape).
PAGE_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": ErrorEnvelope, "description": "Invalid limit or cursor"}}


class Keyed(Protocol):
    """A row of a list: its id orders the list and names it in a cursor."""

    @property
    def id(self) -> str | int: ...


class Page(BaseModel, Generic[T]):
    """A page of a list. Each list names its own subclass (`class TenantList(Page[TenantOut])`), so the OpenAPI
    document keeps one named schema per list."""

    object: Literal["list"] = "list"
    data: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")

    @classmethod
    def of(cls, rows: Sequence[R], request: PageRequest, render: Callable[[R], T], **extra: Any) -> Self:
        """The page of `rows` read for `request` (up to `request.fetch` of them), each rendered; `extra`: the other
        fields of a list that has some."""
        shown = rows[: request.limit]
        more = len(rows) > request.limit and len(shown) > 0
        return cls(
            data=[render(row) for row in shown],
            next_cursor=request.cursor.encode(shown[-1].id) if more else None,
            **extra,
        )


def page_limit(limit: int, maximum: int = MAX_PAGE) -> int:
    """The one limit rule: 1 to `maximum`, or a 400 naming `limit` (never clamped)."""
    if not 1 <= limit <= maximum:
        raise InvalidRequest(f"limit must be 1 to {maximum}.", param="limit")
    return limit


def limit_query(maximum: int = MAX_PAGE) -> Any:
    """The `limit` query parameter of a list, bounded as `page_limit` bounds it."""
    return Query(ge=1, le=maximum, description=f"Items per page (1 to {maximum}).")


@dataclass(frozen=True)
class Cursor:
    """The cursor codec of one list: which keys its cursors may name (a regular expression, unanchored here)."""

    key_pattern: str
    max_chars: int

    @classmethod
    def of_ids(cls, prefix: str) -> Cursor:
        """Cursors of a list of rows whose ids the gateway mints (`app/core/ids.py`: `prefix` + hex)."""
        return cls(re.escape(prefix) + "[0-9a-f]{1,40}", len(prefix) + 40)

    @classmethod
    def of_serials(cls) -> Cursor:
        """Cursors of a list of rows numbered by the database (a BIGINT serial)."""
        return cls("[0-9]{1,18}", 18)

    @property
    def pattern(self) -> str:
        return f"^{self.key_pattern}$"

    def query(self) -> Any:
        """The `cursor` query parameter of the list, with the pattern `decode` checks."""
        return Query(
            max_length=self.max_chars,
            pattern=self.pattern,
            description="Opaque: the previous page's `next_cursor` (omit it for the first page).",
        )

    def encode(self, key: str | int) -> str:
        return str(key)

    def decode(self, cursor: str | None) -> str | None:
        """The key a cursor names, or a 400 naming `cursor`."""
        if cursor is None:
            return None
        if len(cursor) > self.max_chars or re.fullmatch(self.key_pattern, cursor) is None:
            raise InvalidRequest("Invalid cursor: pass the next_cursor of the previous page.", param="cursor")
        return cursor

    def request(self, limit: int, cursor: str | None, *, maximum: int = MAX_PAGE) -> PageRequest:
        """A page request checked by the one limit rule and this codec (400 on either)."""
        return PageRequest(limit=page_limit(limit, maximum), after=self.decode(cursor), cursor=self)


@dataclass(frozen=True)
class PageRequest:
    """A checked request for one page: `limit` rows after the row whose key is `after` (None: the first page)."""

    limit: int
    after: str | None
    cursor: Cursor

    @property
    def fetch(self) -> int:
        """Rows to read: one more than shown, to know whether another page follows."""
        return self.limit + 1
