"""What any request may carry, checked at the edge before a handler or a decoder sees it.

Each rule closes a way hostile input used to reach a 500:

- Size: a body is at most MAX_BODY_BYTES (Litestar's `request_max_body_size`): a 413
  problem, read no further. The largest legitimate body (a broadcast, a task with its
  description) is a few KiB.
- Nesting: a JSON body nests arrays and objects at most MAX_JSON_DEPTH deep: a 400. msgspec
  decodes one level per C recursion and raises RecursionError somewhere below Python's
  recursion limit (1,000 less the frames already in use), which was a 500 even before
  sign-in (register, login). The depth is measured on the raw bytes, before decoding, and
  only when the body holds more brackets than the limit.
- NUL (U+0000): refused in the path, the query string, any header, a JSON body (`\\u0000`,
  in a key or a value) and any form field: a 400 naming where. Postgres text cannot hold it
  (asyncpg refuses: a 500 on any write or look-up of such a string) and no field here has a
  use for it. Other control characters are a rule of the domain's text fields
  (app.domain.text), which every door applies.

`GuardedRequest` is the app's request class (bodies, as JSON or as forms, through every
handler); `RefuseNul` is a middleware (the path, the query and the headers, before the
session and authentication middleware look at cookies and tokens).
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any, NoReturn
from urllib.parse import parse_qsl

import msgspec
from litestar import Request
from litestar.datastructures import FormMultiDict
from litestar.enums import RequestEncodingType, ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from app.web.http.errors import problem

MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
NUL_MESSAGE = "must not contain the NUL character (U+0000)"

#: A JSON string, escapes included; an unterminated one runs to the end of the body (as far as a decoder
#: reads before it fails). Every match succeeds where it starts, so the scan is linear in the body's length
#: (requiring the closing quote made a body of `"\` pairs take seconds: a failed match at each quote).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_DEPTH_STEP = [0] * 256
for _open, _close in (b"[]", b"{}"):
    _DEPTH_STEP[_open], _DEPTH_STEP[_close] = 1, -1
#: `\u0000` not itself escaped (after an even number of backslashes).
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_FORMS = (RequestEncodingType.URL_ENCODED, RequestEncodingType.MULTI_PART)


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (brackets inside strings do not count).

    All in C (a regex, a translate, accumulate over a list lookup): a 64 KiB body of brackets
    costs about a millisecond.
    """
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _shown(name: str) -> str:
    return name.replace("\x00", "\\u0000")


def _nul_field(value: Any, where: str = "") -> str | None:
    """The path (`title`, `params.name`, `items[2]`) of the first key or string holding a NUL."""
    pending = [(value, where)]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path or "body"
        elif isinstance(item, dict):
            for key, inner in item.items():
                name = f"{path}.{key}" if path else str(key)
                if "\x00" in str(key):
                    return name
                pending.append((inner, name))
        elif isinstance(item, list):
            pending.extend((inner, f"{path}[{index}]") for index, inner in enumerate(item))
    return None


def _refuse_nul(field: str, where: str) -> NoReturn:
    field = _shown(field)
    raise problem(
        400,
        f"The {where} `{field}` contains a NUL character (U+0000), which no field accepts.",
        title="Invalid request",
        errors=[{"field": field, "message": NUL_MESSAGE}],
    )


def check_json_body(body: bytes) -> None:
    """Refuse a JSON body nested deeper than MAX_JSON_DEPTH, or with a NUL in any key or string."""
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and json_depth(body) > MAX_JSON_DEPTH:
        raise problem(
            400,
            f"The JSON body nests arrays or objects more than {MAX_JSON_DEPTH} deep.",
            title="Invalid request",
            errors=[{"field": "body", "message": f"must nest at most {MAX_JSON_DEPTH} levels deep"}],
        )
    if _ESCAPED_NUL.search(body):
        try:
            field = _nul_field(msgspec.json.decode(body))
        except msgspec.DecodeError:
            return  # not JSON: the decoder's own 400 says so
        if field is not None:
            _refuse_nul(field, "field")


class GuardedRequest(Request[Any, Any, Any]):
    """The app's request: a body is checked (check_json_body, NUL in form fields) before it is decoded."""

    async def body(self) -> bytes:
        body = await super().body()
        if body and self.content_type[0] not in _FORMS:
            check_json_body(body)  # a handler may decode any other body as JSON (login does)
        return body

    async def form(self) -> FormMultiDict:
        form = await super().form()
        for name, value in form.multi_items():
            if "\x00" in name or (isinstance(value, str) and "\x00" in value):
                _refuse_nul(name, "form field")
        return form


def _nul_in_query(query: bytes) -> str | None:
    if b"%00" not in query and b"\x00" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name
    return "query"


class RefuseNul(ASGIMiddleware):
    """A 400 for a NUL in the path, a query parameter or a header, before anything reads them."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if "\x00" in scope["path"]:
            _refuse_nul("path", "request's")
        if (name := _nul_in_query(scope.get("query_string", b""))) is not None:
            _refuse_nul(name, "query parameter")
        for header, value in scope.get("headers", []):
            if b"\x00" in header or b"\x00" in value:
                _refuse_nul(header.decode("latin-1"), "header")
        await next_app(scope, receive, send)
