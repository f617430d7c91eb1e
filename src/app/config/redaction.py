"""Secrets that must never reach a log line: the tokens of emailed links, wherever they appear.

Account emails carry single-use tokens in their links' paths (`/verify-email/<token>`,
`/reset-password/<token>`; see app.domain.accounts.emails); links sent before that carried
them as `?token=`, and those still work. Anyone who reads the logs (an operator, a log
service, a leaked backup) could use such a link, so every log line of every process passes
through `redact_secrets` (a structlog processor in app.config.logging): the access log's
path and query, Dramatiq's own lines (which print a message's arguments), granian's access
log when it is on, and anything else that quotes a link.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

REDACTED = "[redacted]"

#: Paths whose next segment is a secret token (the pages the emailed links open).
TOKEN_PATHS = ("/verify-email/", "/reset-password/")
#: Query parameters whose value is a secret.
SECRET_PARAMS = frozenset({"token", "access_token", "refresh_token", "id_token"})

_IN_PATH = re.compile("(" + "|".join(re.escape(path) for path in TOKEN_PATHS) + r")[^/?#\s\"'<>]+")
_IN_QUERY = re.compile(r"((?:^|[?&;\s])(?:" + "|".join(sorted(SECRET_PARAMS)) + r")=)[^&#\s\"'<>]*", re.IGNORECASE)
_HINTS = ("token", *TOKEN_PATHS)
#: structlog's own keys (besides `_record` and `_from_structlog`), which its later processors read.
_UNTOUCHED = frozenset({"exc_info", "stack_info"})


def redact(text: str) -> str:
    """`text` with every token of an emailed link (in a path or a query string) replaced by REDACTED."""
    lowered = text.lower()
    if not any(hint in lowered for hint in _HINTS):
        return text  # the usual case, and cheap
    return _IN_QUERY.sub(r"\1" + REDACTED, _IN_PATH.sub(r"\1" + REDACTED, text))


def _scrub(value: Any, key: str = "") -> Any:
    if key.lower() in SECRET_PARAMS and value:
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    return value


def redact_secrets(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: redact link tokens in every value (a parsed query's `token` key included)."""
    for key, value in event_dict.items():
        if not key.startswith("_") and key not in _UNTOUCHED:
            event_dict[key] = _scrub(value, key)
    return event_dict
