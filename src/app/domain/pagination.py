"""The list envelope of the API: `{items, total, limit, offset}`."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
#: The largest `?offset=`: a 32-bit signed integer, which every database here binds as an OFFSET
#: (a larger Python int failed in the driver: a 500). Nobody pages that far; a page past the end is empty.
MAX_OFFSET = 2**31 - 1


class Page(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    items: list[T]
    total: int
    limit: int
    offset: int


class CursorPage(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """A page that also says where the next one starts: `?cursor=<next_cursor>`, null on the last page.

    `offset` still works (the envelope of `Page`); a cursor pages by position instead, so rows
    added or deleted meanwhile never make one show twice or be skipped.
    """

    items: list[T]
    total: int
    limit: int
    offset: int
    next_cursor: str | None
