"""What the audit log records (its actions), who a door says is acting, and a row as the API shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

# Action names are not credentials (ruff's S105 reads "password" and "token" in them as ones).
# ruff: noqa: S105

# Sign-in and sign-out.
LOGIN = "auth.login"
LOGIN_FAILED = "auth.login_failed"
LOGOUT = "auth.logout"
REFRESH_REUSED = "auth.refresh_reused"
# The account's own credentials and data.
USER_REGISTERED = "user.registered"
PASSWORD_CHANGED = "password.changed"
PASSWORD_RESET = "password.reset"
EMAIL_CHANGE_REQUESTED = "email.change_requested"
EMAIL_CHANGED = "email.changed"
EMAIL_VERIFIED = "email.verified"
TOKEN_CREATED = "token.created"
TOKEN_REVOKED = "token.revoked"
SESSION_REVOKED = "session.revoked"
WEBHOOK_SECRET_ROTATED = "webhook_secret.rotated"
OIDC_LINKED = "oidc.linked"
OIDC_UNLINKED = "oidc.unlinked"
ACCOUNT_EXPORTED = "account.exported"
ACCOUNT_DELETED = "account.deleted"
# Administration (also from the operators' CLI).
USER_CREATED = "user.created"
USER_ROLE_CHANGED = "user.role_changed"
USER_DEACTIVATED = "user.deactivated"
USER_ACTIVATED = "user.activated"
BROADCAST_SENT = "broadcast.sent"
TASK_RETRIED = "task.retried"

#: Every action the log records, for the filters' help and the admin page's choices.
ACTIONS: tuple[str, ...] = (
    LOGIN,
    LOGIN_FAILED,
    LOGOUT,
    REFRESH_REUSED,
    USER_REGISTERED,
    PASSWORD_CHANGED,
    PASSWORD_RESET,
    EMAIL_CHANGE_REQUESTED,
    EMAIL_CHANGED,
    EMAIL_VERIFIED,
    TOKEN_CREATED,
    TOKEN_REVOKED,
    SESSION_REVOKED,
    WEBHOOK_SECRET_ROTATED,
    OIDC_LINKED,
    OIDC_UNLINKED,
    ACCOUNT_EXPORTED,
    ACCOUNT_DELETED,
    USER_CREATED,
    USER_ROLE_CHANGED,
    USER_DEACTIVATED,
    USER_ACTIVATED,
    BROADCAST_SENT,
    TASK_RETRIED,
)

# Kinds of target.
USER = "user"
TOKEN = "token"
SESSION = "session"
TASK = "task"
IDENTITY = "identity"
BROADCAST = "broadcast"


class AuditContext(msgspec.Struct, frozen=True, kw_only=True):
    """Who acts, as a door knows it: the signed-in user (or the CLI's operator), the request and its address."""

    actor_id: UUID | None = None
    actor_name: str | None = None
    request_id: str | None = None
    ip: str | None = None

    def acting_as(self, actor_id: UUID | None, actor_name: str | None) -> AuditContext:
        """The same request, acted by someone the door learnt of on the way (who signed in, whose link it was)."""
        return msgspec.structs.replace(self, actor_id=actor_id, actor_name=actor_name)


class AuditEntryOut(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded action."""

    id: UUID
    at: datetime
    action: str
    actor_id: UUID | None
    actor_name: str | None
    target_type: str | None
    target_id: str | None
    target_name: str | None
    request_id: str | None
    ip: str | None
    detail: dict[str, Any]


class AuditPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of the log, newest first: pass `next_cursor` as `?cursor=` (with the same filters) for the next.

    No `total`: counting a log of a year's sign-ins for every page costs what keyset pages
    avoid. `next_cursor` is null on the last page.
    """

    items: list[AuditEntryOut]
    limit: int
    next_cursor: str | None
