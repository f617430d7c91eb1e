"""Rules for the text people type into fields that are stored and shown again (titles, names, messages).

Control characters have no place in them: a terminal escape (ESC), a NUL (which Postgres
text cannot hold) or a backspace in a title is an attack on whoever reads it next, never
a typo. Single-line fields refuse every C0 and C1 control character and DEL; multi-line
fields allow tab and line breaks. Every door (API, pages, CLI) reaches these through the
domain services, so the rule is the same everywhere.
"""

from __future__ import annotations

import re

_SINGLE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MULTI_LINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
SINGLE_LINE_PROBLEM = "must not contain control characters"
MULTI_LINE_PROBLEM = "must not contain control characters (tab and line breaks are allowed)"


def control_problem(value: str | None, *, multiline: bool = False) -> str | None:
    """What is wrong with `value` (None: nothing), as a rule's message."""
    if value is None:
        return None
    if multiline:
        return MULTI_LINE_PROBLEM if _MULTI_LINE.search(value) else None
    return SINGLE_LINE_PROBLEM if _SINGLE_LINE.search(value) else None
