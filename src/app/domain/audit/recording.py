"""Writing the audit log: `record` adds one row to the caller's session, so it commits (or rolls back) with the
action it describes: an action is never committed without its row, and one rolled back leaves none.

What a client typed (a username in a failed sign-in, a token's name) is kept for display only:
control characters (NUL, escapes, bidi overrides) are dropped and it is cut to its column's size.
`detail` is a small JSON object: at most MAX_DETAIL_KEYS keys of plain values, strings cut to
MAX_DETAIL_TEXT characters, MAX_DETAIL_BYTES in all; keys that name a credential (password,
token, secret) are never kept, whatever a caller passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.audit.models import AuditEntry
from app.domain.audit.schemas import LOGIN_FAILED, USER, AuditContext
from app.domain.clock import utcnow

MAX_ACTOR_NAME = 100
MAX_TARGET_NAME = 320
#: A username typed in a failed sign-in is kept to this many characters (usernames have at most 32, emails 320).
MAX_TYPED_LOGIN = 64
MAX_ID = 64
MAX_REQUEST_ID = 128
MAX_IP = 64
MAX_DETAIL_KEYS = 16
MAX_DETAIL_TEXT = 200
MAX_DETAIL_BYTES = 2048
#: Keys never kept in `detail`: whatever holds them is a credential.
SECRET_KEYS = frozenset(
    {"password", "current_password", "new_password", "token", "access_token", "refresh_token", "secret", "id_token"}
)

Scalar = str | int | float | bool | None


def printable(text: object, limit: int) -> str | None:
    """`text` as kept for display: control and format characters dropped, cut to `limit`; None when empty."""
    if text is None:
        return None
    kept = "".join(c for c in str(text) if c.isprintable())[:limit].strip()
    return kept or None


def _scalar(value: object) -> Scalar:
    if value is None or isinstance(value, bool | int | float):
        return value
    return printable(value, MAX_DETAIL_TEXT) or ""


def _value(value: object) -> Scalar | list[Scalar]:
    if isinstance(value, list | tuple | set | frozenset):
        return [_scalar(item) for item in list(value)[:MAX_DETAIL_KEYS]]
    return _scalar(value)


def clean_detail(detail: Mapping[str, object] | None) -> dict[str, Any] | None:
    """`detail` as stored: plain values, no credential, small (see the module's docstring); None when empty."""
    if not detail:
        return None
    kept: dict[str, Any] = {}
    for key, value in detail.items():
        name = printable(key, 64)
        if name is None or name.lower() in SECRET_KEYS or len(kept) >= MAX_DETAIL_KEYS:
            continue
        kept[name] = _value(value)
    if len(msgspec.json.encode(kept)) > MAX_DETAIL_BYTES:
        return {"truncated": True}
    return kept or None


def record(
    session: AsyncSession,
    context: AuditContext,
    action: str,
    *,
    target_type: str | None = None,
    target_id: UUID | str | None = None,
    target_name: str | None = None,
    detail: Mapping[str, object] | None = None,
) -> AuditEntry:
    """Add the row of `action` to `session`: it is written by the caller's next flush or commit."""
    entry = AuditEntry(
        at=utcnow(),
        action=action,
        actor_id=context.actor_id,
        actor_name=printable(context.actor_name, MAX_ACTOR_NAME),
        target_type=target_type,
        target_id=printable(target_id, MAX_ID),
        target_name=printable(target_name, MAX_TARGET_NAME),
        request_id=printable(context.request_id, MAX_REQUEST_ID),
        ip=printable(context.ip, MAX_IP),
        detail=clean_detail(detail),
    )
    session.add(entry)
    return entry


async def record_login_failure(
    session: AsyncSession, context: AuditContext, typed: str, user_id: UUID | None, *, kind: str
) -> None:
    """A failed sign-in, in a short transaction of its own (the failure writes nothing else).

    The target is the account the login named (`user_id`, None for nobody's) under the name
    as typed, cleaned and cut to MAX_TYPED_LOGIN characters. Sign-ins refused by the rate
    limits are not checked and not recorded, so spraying grows the log at most as fast as
    the limits let passwords be tried.
    """
    record(
        session,
        context,
        LOGIN_FAILED,
        target_type=USER,
        target_id=user_id,
        target_name=printable(typed, MAX_TYPED_LOGIN),
        detail={"kind": kind, "known_account": user_id is not None},
    )
    await session.commit()
