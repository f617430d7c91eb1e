"""Users and the credentials that hang off them. Secrets are stored only as hashes."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase, UUIDv7Base
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.domain.clock import utcnow


class User(UUIDv7AuditBase):
    """A person. `email` and `username` are kept lower-case, so uniqueness ignores case."""

    __tablename__ = "user_account"

    email: Mapped[str] = mapped_column(String(320), unique=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    full_name: Mapped[str | None] = mapped_column(String(200), default=None)
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    is_active: Mapped[bool] = mapped_column(default=True)
    is_verified: Mapped[bool] = mapped_column(default=False)
    is_superuser: Mapped[bool] = mapped_column(default=False)
    email_notifications: Mapped[bool] = mapped_column(default=True)
    #: Bumped when the password changes or sessions are revoked; access tokens and browser
    #: sessions carry the value they were issued with and stop working when it moves on.
    credentials_version: Mapped[int] = mapped_column(default=1)


class RefreshToken(UUIDv7Base):
    """One refresh token. Rotation retires it (`replaced_at`); presenting a retired one revokes its family."""

    __tablename__ = "refresh_token"
    __table_args__ = (Index("ix_refresh_token_family_id", "family_id"),)

    user_id: Mapped[UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    family_id: Mapped[UUID]
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    replaced_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class EmailToken(UUIDv7Base):
    """A single-use token sent by email: `verify` (the address), `reset` (the password) or `email` (a new address)."""

    __tablename__ = "email_token"

    user_id: Mapped[UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    #: An `email` token's address: the account's email becomes it when the link is opened.
    new_email: Mapped[str | None] = mapped_column(String(320), default=None)


class ExternalIdentity(UUIDv7Base):
    """An account at an external OpenID Connect provider bound to a user: (issuer, subject) is who it is.

    The provider's email is kept only as it was when bound (`email_at_link`), for the user's
    list; it never decides who a token is, since a provider may let its users change it.
    """

    __tablename__ = "external_identity"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_external_identity_issuer_subject"),)

    user_id: Mapped[UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(500))
    #: OIDC Core 2: at most 255 ASCII characters.
    subject: Mapped[str] = mapped_column(String(255))
    email_at_link: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)


class PersonalAccessToken(UUIDv7Base):
    """A named, scoped, expiring API credential of a user (app.domain.accounts.access_tokens).

    Only the token's SHA-256 hash is kept, and its first characters (`prefix`) to tell it apart.
    It works while unrevoked, unexpired and made under the user's current `credentials_version`.
    """

    __tablename__ = "personal_access_token"

    user_id: Mapped[UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    #: Space-separated: "read", "write", "admin".
    scopes: Mapped[str] = mapped_column(String(32))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    credentials_version: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class SignIn(UUIDv7Base):
    """One sign-in of a user: a browser session or an API refresh family (app.domain.accounts.sign_ins).

    An API sign-in's id is its refresh family's; a browser's is kept in its server-side session.
    A revoked sign-in's id counts as a revoked family (app.domain.accounts.revocation), so that
    everything it let in stops at once. No secret is kept here: the session id and the refresh
    tokens stay where they were (the session store; refresh tokens as hashes).
    """

    __tablename__ = "sign_in"

    user_id: Mapped[UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    #: "browser" or "api".
    kind: Mapped[str] = mapped_column(String(8))
    user_agent: Mapped[str | None] = mapped_column(String(300), default=None)
    ip_address: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
