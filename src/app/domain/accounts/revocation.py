"""What a credential may still do, and how every process hears that it may not.

A credential is what a request shows: an access token (its user, the user's
`credentials_version` when it was issued, and its refresh family) or a browser session
(its user, that version, and the session's id). It stops working when

- the user is deactivated, or the version moves on (password change or reset,
  deactivation: everything of the user ends), or
- its refresh family is revoked (logout, a reused refresh token: that sign-in ends), or,
  for a personal access token (whose id stands for its family), the token is revoked, or
  its sign-in was ended (app.domain.accounts.sign_ins: a browser session's sign-in id is
  its family), or
- its browser session is gone (the browser signed out).

`CredentialState` is what the database says about one user, read in one go. Web
processes keep it in memory (the hot path costs no database round trip) and drop it the
moment a door announces a revocation on `REVOCATION_CHANNEL`: every process subscribes.

Whatever changes a user is announced without a door having to remember it: every
session records the users it changed (ORM changes to a User, and refresh families
revoked through `users_changed`), and once it commits, the callbacks registered with
`on_users_changed` get their ids (the web's CredentialCache, the CLI's announcer). A
process that drops its copy then reads the committed truth.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

import msgspec
from sqlalchemy import bindparam, event, inspect, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session, UOWTransaction

from app.domain.accounts.models import PersonalAccessToken, RefreshToken, SignIn, User
from app.domain.clock import utcnow
from app.domain.database import read
from app.domain.notifications.events import EventPublisher

#: The channel on which revocations are announced: a JSON list of user ids.
REVOCATION_CHANNEL = "auth.revoked"


class Credential(msgspec.Struct, frozen=True, kw_only=True):
    """What one request (or one open stream) was let in with."""

    user_id: uuid.UUID
    version: int
    #: The refresh family of an access token, or the id of a personal access token.
    family: uuid.UUID | None = None
    session_id: str | None = None
    #: A personal access token's scopes; None for a signed-in user's credential (no limit by scope).
    scopes: frozenset[str] | None = None


_USER_MAPPER = inspect(User)
#: (attribute, column) of every column a User maps, and the statement that reads them for one user.
_USER_ATTRIBUTES = tuple((prop.key, prop.columns[0]) for prop in _USER_MAPPER.column_attrs)
_USER_BY_ID = select(*(column for _, column in _USER_ATTRIBUTES)).where(User.id == bindparam("user_id"))
#: Refresh families of the user revoked recently enough that access tokens issued from them may live on,
#: the user's revoked personal access tokens that have not expired (their ids are their families), and
#: sign-ins ended within a browser session's lifetime (a browser session carries its sign-in's id).
_REVOKED_FAMILIES = union_all(
    select(RefreshToken.family_id).where(
        RefreshToken.user_id == bindparam("user_id"),
        RefreshToken.revoked_at > bindparam("since"),
    ),
    select(PersonalAccessToken.id).where(
        PersonalAccessToken.user_id == bindparam("user_id"),
        PersonalAccessToken.revoked_at.is_not(None),
        PersonalAccessToken.expires_at > bindparam("now"),
    ),
    select(SignIn.id).where(
        SignIn.user_id == bindparam("user_id"),
        SignIn.revoked_at > bindparam("sessions_since"),
    ),
)


class CredentialState:
    """One user's row and the refresh families revoked within an access token's lifetime."""

    __slots__ = ("_values", "is_active", "revoked_families", "version")

    def __init__(self, values: dict[str, Any], revoked_families: frozenset[uuid.UUID]) -> None:
        self._values = values
        self.is_active: bool = values["is_active"]
        self.version: int = values["credentials_version"]
        self.revoked_families = revoked_families

    def allows(self, version: object, family: uuid.UUID | None = None) -> bool:
        """True while a credential issued at `version` (from `family`) may act for this user."""
        return self.is_active and version == self.version and (family is None or family not in self.revoked_families)

    def user(self) -> User:
        """A new detached User, as a closed session leaves a loaded one: each request gets its own to change.

        Made as SQLAlchemy loads a row (the instance's dict filled, its identity key set), not
        through `User(...)`, whose attribute events and validators cost 20 times as much: this
        runs on every authenticated request, with values that came from the database.
        """
        user: User = _USER_MAPPER.class_manager.new_instance()
        user.__dict__.update(self._values)
        inspect(user).key = _USER_MAPPER.identity_key_from_primary_key((self._values["id"],))
        return user


class Lifetimes(msgspec.Struct, frozen=True):
    """How long a revoked credential could still be presented: an access token, a browser session."""

    access_token: timedelta
    session: timedelta

    def parameters(self) -> dict[str, Any]:
        now = utcnow()
        return {"since": now - self.access_token, "sessions_since": now - self.session, "now": now}


async def load_credentials(reads: AsyncEngine, user_id: uuid.UUID, lifetimes: Lifetimes) -> CredentialState | None:
    """The user's credential state, or None for no such user: two statements side by side."""
    parameters = {"user_id": user_id, **lifetimes.parameters()}
    rows, families = await asyncio.gather(
        read(reads, _USER_BY_ID, parameters),
        read(reads, _REVOKED_FAMILIES, parameters),
    )
    if not rows:
        return None
    values = {key: value for (key, _), value in zip(_USER_ATTRIBUTES, rows[0], strict=True)}
    return CredentialState(values, frozenset(row[0] for row in families))


#: The same two reads for several users at once (CredentialCache renews its open streams' users with them).
_USERS_BY_IDS = select(*(column for _, column in _USER_ATTRIBUTES)).where(
    User.id.in_(bindparam("user_ids", expanding=True))
)
_REVOKED_FAMILIES_OF = union_all(
    select(RefreshToken.user_id, RefreshToken.family_id).where(
        RefreshToken.user_id.in_(bindparam("user_ids", expanding=True)),
        RefreshToken.revoked_at > bindparam("since"),
    ),
    select(PersonalAccessToken.user_id, PersonalAccessToken.id).where(
        PersonalAccessToken.user_id.in_(bindparam("user_ids", expanding=True)),
        PersonalAccessToken.revoked_at.is_not(None),
        PersonalAccessToken.expires_at > bindparam("now"),
    ),
    select(SignIn.user_id, SignIn.id).where(
        SignIn.user_id.in_(bindparam("user_ids", expanding=True)),
        SignIn.revoked_at > bindparam("sessions_since"),
    ),
)


async def load_many_credentials(
    reads: AsyncEngine, user_ids: Sequence[uuid.UUID], lifetimes: Lifetimes
) -> dict[uuid.UUID, CredentialState | None]:
    """`load_credentials` of each user (None: no such user), in two statements for all of them."""
    parameters = {"user_ids": list(user_ids), **lifetimes.parameters()}
    rows, families = await asyncio.gather(
        read(reads, _USERS_BY_IDS, parameters),
        read(reads, _REVOKED_FAMILIES_OF, parameters),
    )
    revoked: dict[uuid.UUID, set[uuid.UUID]] = {}
    for user_id, family_id in families:
        revoked.setdefault(user_id, set()).add(family_id)
    states: dict[uuid.UUID, CredentialState | None] = dict.fromkeys(user_ids)
    for row in rows:
        values = {key: value for (key, _), value in zip(_USER_ATTRIBUTES, row, strict=True)}
        states[values["id"]] = CredentialState(values, frozenset(revoked.get(values["id"], ())))
    return states


def encode_revoked(user_ids: Iterable[uuid.UUID]) -> bytes:
    return msgspec.json.encode(sorted(str(user_id) for user_id in user_ids))


def decode_revoked(data: bytes) -> list[uuid.UUID] | None:
    """The user ids of an announcement; None when it names none (a wake-up: forget everyone)."""
    try:
        raw = msgspec.json.decode(data, type=list[uuid.UUID])
    except msgspec.DecodeError:
        return None
    return raw or None


async def announce_revoked(publisher: EventPublisher, user_ids: Iterable[uuid.UUID]) -> None:
    """Tell every process that these users' credentials changed (for a process without a web app: the CLI)."""
    ids = set(user_ids)
    if ids:
        await publisher.publish(REVOCATION_CHANNEL, encode_revoked(ids))


# --- which users a transaction changed -----------------------------------------------------

#: Where a session keeps the ids of the users it changed, until it commits or rolls back.
_CHANGED = "changed_users"
_callbacks: list[Callable[[set[uuid.UUID]], None]] = []


def users_changed(session: Session | Any, user_ids: Iterable[uuid.UUID]) -> None:
    """Record that the session's transaction changes these users' credentials (beyond their row)."""
    target = session.sync_session if hasattr(session, "sync_session") else session
    target.info.setdefault(_CHANGED, set()).update(user_ids)


def on_users_changed(callback: Callable[[set[uuid.UUID]], None]) -> Callable[[], None]:
    """Call `callback(ids)` in the committing thread after each commit that changed users; returns the undo."""
    _callbacks.append(callback)
    return lambda: _callbacks.remove(callback)


@event.listens_for(Session, "before_flush")
def _collect(session: Session, _flush: UOWTransaction, _instances: object) -> None:
    changed = [o.id for o in (*session.new, *session.dirty, *session.deleted) if isinstance(o, User)]
    if changed:
        users_changed(session, changed)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    ids: set[uuid.UUID] | None = session.info.pop(_CHANGED, None)
    if ids:
        for callback in list(_callbacks):
            callback(ids)


@event.listens_for(Session, "after_soft_rollback")
def _rolled_back(session: Session, _previous: object) -> None:
    session.info.pop(_CHANGED, None)
