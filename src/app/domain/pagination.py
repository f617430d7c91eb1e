"""The list envelope of the API: `{items, total, limit, offset}`."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class Page(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    items: list[T]
    total: int
    limit: int
    offset: int
