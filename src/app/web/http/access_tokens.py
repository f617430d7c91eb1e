"""Personal access tokens at the door: what a presented token stands for, what it may reach, when it was used.

The token's grant (its user, scopes, expiry and the credentials version it was made under)
is read once per process and kept by the token's hash: a token's row never changes but for
its revocation, which the credential check sees (its id is one of the user's revoked
families, app.domain.accounts.revocation), not this index. A request with a token is then
let in exactly as one with an access token is (app.web.http.auth), limited to its scopes.

Last use is kept in memory and written a minute at a time (app.web.http.last_uses).
"""

from __future__ import annotations

import time
from collections import OrderedDict

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.domain.accounts.access_tokens import AccessTokenOut, Scope, TokenGrant, grant_for, record_use
from app.domain.accounts.services import token_hash
from app.web.http.last_uses import LastUses

log = structlog.get_logger(__name__)

#: Grants remembered at most; the least recently used go first.
MAX_GRANTS = 10_000
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def required_scope(method: str, path: str) -> Scope | None:
    """The scope a personal access token needs for this request; None when no token may make it.

    Reading tasks, notifications, task kinds, one's own user and the event stream needs
    `read`; changing tasks and notifications `write`; the admin API (which also wants a
    superuser) `admin`. Everything else, the pages and the account itself (password,
    profile, sign-in, tokens) included, needs a signed-in user: a leaked token cannot take
    over its account.
    """
    if path.startswith(("/api/v1/admin/", "/api/v1/diagnostics/")):
        return "admin"
    safe = method in _SAFE_METHODS
    if path.startswith(("/api/v1/tasks", "/api/v1/notifications", "/api/v1/schedules")) or path == "/api/v1/task-kinds":
        return "read" if safe else "write"
    if path in ("/api/v1/events", "/api/v1/users/me") and safe:
        return "read"
    return None


class TokenIndex(LastUses):
    """Grants of presented personal access tokens by hash, and their uses not yet written."""

    def __init__(self, reads: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__(sessions, record_use, "access-token")
        self._reads = reads
        self._grants: OrderedDict[str, TokenGrant] = OrderedDict()

    async def grant(self, raw: str) -> TokenGrant | None:
        """What `raw` stands for while it has not expired; None for an unknown, revoked or expired token."""
        key = token_hash(raw)
        grant = self._grants.get(key)
        if grant is None:
            grant = await grant_for(self._reads, raw)
            if grant is None:
                return None
            self._grants[key] = grant
            if len(self._grants) > MAX_GRANTS:
                self._grants.popitem(last=False)
        else:
            self._grants.move_to_end(key)
        if grant.expires_at <= time.time():
            return None
        return grant

    def with_last_use(self, token: AccessTokenOut) -> AccessTokenOut:
        """The token as listed, with this process's use of it that is not written yet."""
        pending = self.last_use(token.id)
        if pending is None or (token.last_used_at is not None and token.last_used_at >= pending):
            return token
        return msgspec.structs.replace(token, last_used_at=pending)
