"""External identities: accounts at an OpenID Connect provider, bound to users by (issuer, subject).

Who a provider's token is depends on its issuer and subject only, never on its email:
a provider may let its users set any address, so matching by email would hand a local
account to whoever typed its address there.

- A bound (issuer, subject) is its user, whatever email the token carries today.
- An unbound one whose provider-verified email is nobody's makes a new user, bound to it.
- An unbound one whose email is already an account's is refused (`LinkRequired`): the
  owner signs in to that account and links it (`link`), proving control of both.
- Linking needs the provider to say the email is verified (`email_verified: true`) and
  that email to be the signed-in account's own, already verified, email. So a stolen or
  planted token cannot be bound to an account whose address its holder does not control,
  nor to one an attacker registered with someone else's (never verified) address.

Services work inside the caller's session and only flush; the door commits.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated
from uuid import UUID

import msgspec
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.accounts import rules
from app.domain.accounts.errors import InvalidCredentials
from app.domain.accounts.models import ExternalIdentity, User
from app.domain.errors import Conflict, InvalidInput, NotFound

LINK_PATH = "/api/v1/users/me/identities"


class ProviderIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """What a verified provider token says about its holder."""

    issuer: str
    subject: str
    email: str | None = None
    email_verified: bool = False


class IdentityLink(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A provider's ID token, presented by a signed-in user to bind its identity to their account."""

    id_token: Annotated[str, msgspec.Meta(min_length=1, max_length=16_384)]


class IdentityOut(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    issuer: str
    subject: str
    email_at_link: str
    created_at: datetime


def identity_out(identity: ExternalIdentity) -> IdentityOut:
    return msgspec.convert(identity, IdentityOut, from_attributes=True)


class ExternalSignInRefused(InvalidCredentials):
    """A provider token that names no bound identity and cannot make a new account."""


class LinkRequired(ExternalSignInRefused):
    """The token's email belongs to an account it is not bound to."""

    def __init__(self) -> None:
        super().__init__(
            "An account with this email already exists and is not linked to this identity provider account. "
            "Sign in to that account (or reset its password) and link it with "
            f'POST {LINK_PATH} {{"id_token": ...}}.'
        )


class Identities:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- signing in ----------------------------------------------------------------------

    async def user_for(self, identity: ProviderIdentity) -> User:
        """The user bound to `identity`, or a new one bound to it; ExternalSignInRefused otherwise.

        Two first sign-ins of one identity at once can both try to create it: the loser's
        flush raises IntegrityError, and the door tries again (and finds the binding).
        """
        if (user := await self._bound_user(identity)) is not None:
            return user
        email = _verified_email(identity)
        if email is None:
            raise ExternalSignInRefused(
                "The identity provider has not verified this account's email, so no account can be made for it."
            )
        if await self.session.scalar(select(User.id).where(User.email == email)) is not None:
            # A concurrent first sign-in of this very identity may have committed its account
            # (and binding, in the same transaction) since the first look: look once more.
            if (user := await self._bound_user(identity)) is not None:
                return user
            raise LinkRequired()
        user = User(email=email, username=await self._free_username(email), is_verified=True)
        self.session.add(user)
        await self.session.flush()
        self.session.add(_binding(user, identity, email))
        await self.session.flush()
        return user

    async def _bound_user(self, identity: ProviderIdentity) -> User | None:
        user: User | None = await self.session.scalar(
            select(User)
            .join(ExternalIdentity, ExternalIdentity.user_id == User.id)
            .where(ExternalIdentity.issuer == identity.issuer, ExternalIdentity.subject == identity.subject)
        )
        return user

    async def _free_username(self, email: str) -> str:
        base = rules.normal_username(email.split("@", 1)[0])
        base = "".join(c for c in base if c.isalnum() or c in "_.-")[:24] or "user"
        username = base if len(base) >= 3 else f"{base}_user"
        while await self.session.scalar(select(User.id).where(User.username == username)) is not None:
            username = f"{base}_{secrets.token_hex(3)}"
        return username

    # --- linking -------------------------------------------------------------------------

    async def link(self, user: User, identity: ProviderIdentity) -> tuple[ExternalIdentity, bool]:
        """Bind `identity` to the signed-in `user`: (the binding, whether it is new)."""
        existing = await self.session.scalar(
            select(ExternalIdentity).where(
                ExternalIdentity.issuer == identity.issuer, ExternalIdentity.subject == identity.subject
            )
        )
        if existing is not None:
            if existing.user_id != user.id:
                raise Conflict("This identity provider account is already linked to another account.")
            return existing, False
        if not user.is_verified:
            raise InvalidInput({"email": "verify your account's email first (POST /api/v1/auth/verify-email)"})
        email = _verified_email(identity)
        if email is None:
            raise InvalidInput({"id_token": "the identity provider has not verified its email (email_verified)"})
        if email != user.email:
            raise InvalidInput({"id_token": "its email is not your account's email"})
        binding = _binding(user, identity, email)
        self.session.add(binding)
        try:
            await self.session.flush()
        except IntegrityError as exc:  # linked by a concurrent request
            raise Conflict("This identity provider account is already linked.") from exc
        return binding, True

    async def of(self, user: User, *, limit: int, offset: int) -> tuple[Sequence[ExternalIdentity], int]:
        """A page of the user's bindings, oldest first, and how many there are."""
        mine = ExternalIdentity.user_id == user.id
        total = await self.session.scalar(select(func.count()).select_from(ExternalIdentity).where(mine)) or 0
        found = await self.session.scalars(
            select(ExternalIdentity)
            .where(mine)
            .order_by(ExternalIdentity.created_at, ExternalIdentity.id)
            .limit(limit)
            .offset(offset)
        )
        return list(found), int(total)

    async def unlink(self, user: User, identity_id: UUID) -> None:
        """Remove one of the user's bindings; not their last way to sign in."""
        binding = await self.session.scalar(
            select(ExternalIdentity).where(ExternalIdentity.id == identity_id, ExternalIdentity.user_id == user.id)
        )
        if binding is None:
            raise NotFound("No such linked identity.")
        if user.password_hash is None:
            count = await self.session.scalar(
                select(func.count()).select_from(ExternalIdentity).where(ExternalIdentity.user_id == user.id)
            )
            if count == 1:
                raise Conflict(
                    "This is your only way to sign in: set a password first (POST /api/v1/auth/forgot-password)."
                )
        await self.session.delete(binding)
        await self.session.flush()


def _verified_email(identity: ProviderIdentity) -> str | None:
    """The token's email, normalised, if the provider verified it and it is a usable address."""
    if not identity.email_verified or identity.email is None:
        return None
    email = rules.normal_email(identity.email)
    return None if rules.email_problem(email) else email


def _binding(user: User, identity: ProviderIdentity, email: str) -> ExternalIdentity:
    return ExternalIdentity(user_id=user.id, issuer=identity.issuer, subject=identity.subject, email_at_link=email)
