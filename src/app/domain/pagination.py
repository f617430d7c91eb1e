"""The list envelopes of the API (`{items, total, limit, offset}`, and `next_cursor`), and the cursor codec.

A cursor holds where a page ended (a listing's own `Position` struct: the last row's sort key
and id). It is opaque to clients, base64url of a msgpack array, and read back strictly:
anything other than exactly what `encode_cursor` makes is refused, so a hand-made or truncated
one is a 400, never a query with strange bounds.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")
P = TypeVar("P", bound=msgspec.Struct)

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


#: Longest cursor a listing accepts: what `encode_cursor` makes is at most 60 characters.
MAX_CURSOR = 100
_CURSOR = re.compile(r"[A-Za-z0-9_-]+")
_encoder = msgspec.msgpack.Encoder(uuid_format="bytes")


def encode_cursor(position: msgspec.Struct) -> str:
    return base64.urlsafe_b64encode(_encoder.encode(position)).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, position_type: type[P]) -> P:
    """The position a cursor holds; ValueError for anything `encode_cursor` did not make."""
    if len(cursor) > MAX_CURSOR or not _CURSOR.fullmatch(cursor):
        raise ValueError("not a cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = msgspec.msgpack.decode(raw, type=position_type)
    except (binascii.Error, msgspec.DecodeError) as exc:
        raise ValueError("not a cursor") from exc
    if encode_cursor(position) != cursor:
        raise ValueError("not a cursor")
    return position


_LIKE_SPECIAL = re.compile(r"([\\%_])")


def like_pattern(text: str, *, prefix: bool = False) -> str:
    """`text` anywhere (or at the start, with `prefix`), matched literally by LIKE with ESCAPE '\\'."""
    escaped = _LIKE_SPECIAL.sub(r"\\\1", text)
    return f"{escaped}%" if prefix else f"%{escaped}%"
