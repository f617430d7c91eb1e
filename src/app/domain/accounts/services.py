"""Account rules: registration, sign-in, profile, passwords, refresh tokens and email tokens.

Services work inside the caller's session and only flush; the door (a request, a job,
a CLI command) commits. Raw tokens are returned once and stored only as SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import cast
from uuid import UUID

import msgspec
from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts import rules
from app.domain.accounts.errors import (
    AlreadyTaken,
    InvalidCredentials,
    InvalidInput,
    InvalidToken,
    RefreshTokenReused,
    UserNotFound,
)
from app.domain.accounts.models import EmailToken, RefreshToken, SignIn, User
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.revocation import users_changed
from app.domain.accounts.schemas import ProfileChange, Registration, UserFlags
from app.domain.clock import utcnow
from app.domain.errors import Conflict

VERIFY = "verify"
RESET = "reset"
#: A link that makes a new address the account's (the token row holds the address).
EMAIL = "email"


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


#: Serialises a user's email-token requests until commit: on Postgres a lock on the user's row, on SQLite the
#: database's one write lock (a no-op update; `updated_at` named, so that no `onupdate` fires).
_USERS = cast(Table, User.__table__)
_LOCK_USER = (
    update(_USERS).where(_USERS.c.id == bindparam("user_id")).values(id=_USERS.c.id, updated_at=_USERS.c.updated_at)
)


@dataclass(frozen=True)
class IssuedRefresh:
    token: str
    family_id: UUID


class AccountService:
    def __init__(self, session: AsyncSession, passwords: Passwords, settings: Settings) -> None:
        self.session = session
        self.passwords = passwords
        self.settings = settings

    # --- users -------------------------------------------------------------------------

    async def get(self, user_id: UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def require(self, user_id: UUID) -> User:
        user = await self.get(user_id)
        if user is None:
            raise UserNotFound("No such user.")
        return user

    async def by_login(self, login: str) -> User | None:
        """The user whose username or email is `login` (case-insensitive)."""
        value = login.strip().lower()
        user: User | None = await self.session.scalar(
            select(User).where(or_(User.username == value, User.email == value))
        )
        return user

    async def register(self, data: Registration, *, is_superuser: bool = False, is_verified: bool = False) -> User:
        email, username = rules.normal_email(data.email), rules.normal_username(data.username)
        rules.check(
            email=rules.email_problem(email),
            username=rules.username_problem(username),
            password=rules.password_problem(data.password, username=username, email=email),
            full_name=rules.full_name_problem(data.full_name),
        )
        await self._ensure_free(email=email, username=username)
        user = User(
            email=email,
            username=username,
            full_name=(data.full_name or "").strip() or None,
            password_hash=await self.passwords.hash(data.password),
            is_superuser=is_superuser,
            is_verified=is_verified,
        )
        self.session.add(user)
        try:
            await self.session.flush()
        except IntegrityError as exc:  # lost a race with a concurrent registration
            raise AlreadyTaken("email or username") from exc
        return user

    async def _ensure_free(self, *, email: str, username: str) -> None:
        taken = (
            await self.session.execute(
                select(User.email, User.username).where(or_(User.email == email, User.username == username))
            )
        ).first()
        if taken is not None:
            raise AlreadyTaken("email" if taken.email == email else "username")

    async def authenticate(self, login: str, password: str) -> User:
        """The active user with this username or email and password, or InvalidCredentials.

        The read's transaction ends before the hash is checked (sessions here keep their
        objects on commit): a check can wait its turn for the hashing threads for seconds
        in a login storm, and must not hold a pooled connection meanwhile, or the storm
        takes every connection from every other request.
        """
        user = await self.by_login(login)
        await self.session.commit()
        ok, needs_rehash = await self.passwords.verify(user.password_hash if user else None, password)
        if user is None or not ok or not user.is_active:
            raise InvalidCredentials("Wrong username or password.")
        if needs_rehash:
            user.password_hash = await self.passwords.hash(password)
            await self.session.flush()
        return user

    async def update_profile(self, user: User, change: ProfileChange) -> User:
        if change.full_name is not msgspec.UNSET:
            rules.check(full_name=rules.full_name_problem(change.full_name))
            user.full_name = (change.full_name or "").strip() or None
        if change.email_notifications is not msgspec.UNSET:
            user.email_notifications = change.email_notifications
        await self.session.flush()
        return user

    async def change_password(self, user: User, current: str, new: str, *, keep_family: UUID | None = None) -> User:
        """Set a new password after checking the current one; every other session and token ends.

        `keep_family` is the caller's own refresh family: it survives, so the caller can refresh.
        """
        rules.check(new_password=rules.password_problem(new, username=user.username, email=user.email))
        await self.confirm_password(user, current)
        await self._set_password(user, new, keep_family=keep_family)
        return user

    async def confirm_password(self, user: User, password: str) -> None:
        """InvalidCredentials unless `password` is the user's (asked again before a change that matters)."""
        ok, _ = await self.passwords.verify(user.password_hash, password)
        if not ok:
            raise InvalidCredentials("The current password is wrong.")

    async def _set_password(self, user: User, new: str, *, keep_family: UUID | None = None) -> None:
        user.password_hash = await self.passwords.hash(new)
        await self.revoke_everything(user, keep_family=keep_family)

    async def revoke_everything(self, user: User, *, keep_family: UUID | None = None) -> None:
        """End every session, access token and refresh family of the user (but `keep_family`, a family or
        the caller's browser sign-in, which stays listed among the user's sign-ins), and cancel a pending
        change of email address."""
        user.credentials_version += 1  # announced on commit (app.domain.accounts.revocation)
        now = utcnow()
        query = update(RefreshToken).where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        sign_ins = update(SignIn).where(SignIn.user_id == user.id, SignIn.revoked_at.is_(None))
        if keep_family is not None:
            query = query.where(RefreshToken.family_id != keep_family)
            sign_ins = sign_ins.where(SignIn.id != keep_family)
        await self.session.execute(query.values(revoked_at=now))
        await self.session.execute(sign_ins.values(revoked_at=now))
        # A pending change of address was perhaps asked for by whoever this ends: it is cancelled too.
        await self.session.execute(
            update(EmailToken)
            .where(EmailToken.user_id == user.id, EmailToken.purpose == EMAIL, EmailToken.used_at.is_(None))
            .values(used_at=now)
        )
        await self.session.flush()

    # --- administration ------------------------------------------------------------------

    async def list_users(
        self, *, text: str | None = None, active: bool | None = None, limit: int = 20, offset: int = 0
    ) -> tuple[Sequence[User], int]:
        query = select(User)
        if text:
            pattern = f"%{text.strip().lower()}%"
            query = query.where(
                or_(User.email.like(pattern), User.username.like(pattern), func.lower(User.full_name).like(pattern))
            )
        if active is not None:
            query = query.where(User.is_active.is_(active))
        total = await self.session.scalar(select(func.count()).select_from(query.subquery())) or 0
        users = await self.session.scalars(query.order_by(User.created_at.desc(), User.id).limit(limit).offset(offset))
        return list(users), int(total)

    async def set_flags(self, user: User, flags: UserFlags, *, by: User | None = None) -> User:
        """Activate, deactivate, promote or demote `user`; a superuser (`by`) may not lock themself out."""
        if by is not None and by.id == user.id and (flags.is_active is False or flags.is_superuser is False):
            raise Conflict("You cannot deactivate or demote your own account; another superuser can.")
        if flags.is_active is not msgspec.UNSET and flags.is_active != user.is_active:
            user.is_active = flags.is_active
            if not user.is_active:
                await self.revoke_everything(user)
        if flags.is_superuser is not msgspec.UNSET:
            user.is_superuser = flags.is_superuser
        await self.session.flush()
        return user

    # --- email tokens --------------------------------------------------------------------

    async def email_token(self, user: User, purpose: str, *, new_email: str | None = None) -> str:
        """A new single-use token; earlier unused tokens of the same purpose stop working."""
        minutes = self.settings.email_token_minutes if purpose == RESET else self.settings.verification_token_hours * 60
        # Under a lock on the user (until commit): concurrent requests cannot each leave a working token behind.
        await self.session.execute(_LOCK_USER, {"user_id": user.id})
        now = utcnow()
        await self.session.execute(
            update(EmailToken)
            .where(EmailToken.user_id == user.id, EmailToken.purpose == purpose, EmailToken.used_at.is_(None))
            .values(used_at=now)
        )
        raw = new_token()
        self.session.add(
            EmailToken(
                user_id=user.id,
                purpose=purpose,
                token_hash=token_hash(raw),
                expires_at=now + timedelta(minutes=minutes),
                new_email=new_email,
            )
        )
        await self.session.flush()
        return raw

    async def _use_email_token(self, raw: str, *purposes: str) -> tuple[User, str | None]:
        """The user of an unused, unexpired token of one of `purposes`, and the token's new email (if any)."""
        now = utcnow()
        # One UPDATE claims the token: two concurrent uses cannot both succeed.
        claimed = (
            await self.session.execute(
                update(EmailToken)
                .where(
                    EmailToken.token_hash == token_hash(raw),
                    EmailToken.purpose.in_(purposes),
                    EmailToken.used_at.is_(None),
                    EmailToken.expires_at > now,
                )
                .values(used_at=now)
                .returning(EmailToken.user_id, EmailToken.new_email)
            )
        ).first()
        user = await self.get(claimed.user_id) if claimed is not None else None
        if claimed is None or user is None or not user.is_active:
            raise InvalidToken("This link is invalid, expired or already used.")
        return user, claimed.new_email

    async def verify_email(self, raw: str) -> User:
        """Confirm an address with an emailed link: the account's own (`verify`), or a new one (`email`), which
        then becomes the account's. Either way the account's address is verified."""
        user, _ = await self.confirm_email(raw)
        return user

    async def confirm_email(self, raw: str) -> tuple[User, str | None]:
        """`verify_email`, also answering the address the account had before, when the link changed it."""
        user, new_email = await self._use_email_token(raw, VERIFY, EMAIL)
        old_email = None
        if new_email is not None:
            old_email = user.email if user.email != new_email else None
            await self._take_email(user, new_email)
        user.is_verified = True
        await self.session.flush()
        return user, old_email

    async def _take_email(self, user: User, email: str) -> None:
        """Make `email` the user's, unless it became another account's meanwhile (AlreadyTaken, also when two
        confirmations race: the unique constraint decides). Links sent to the old address stop working."""
        if await self.session.scalar(select(User.id).where(User.email == email, User.id != user.id)) is not None:
            raise AlreadyTaken("email")
        user.email = email
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise AlreadyTaken("email") from exc
        await self.session.execute(
            update(EmailToken)
            .where(EmailToken.user_id == user.id, EmailToken.purpose == VERIFY, EmailToken.used_at.is_(None))
            .values(used_at=utcnow())
        )

    async def request_email_change(self, user: User, new_email: str, current_password: str) -> tuple[str, str]:
        """(the new address, a token for the link sent to it); the account's email changes only once it is opened.

        Needs the current password (InvalidCredentials). The address must be valid, not the
        current one and nobody's (AlreadyTaken; checked again when the link is opened).
        """
        email = rules.normal_email(new_email)
        rules.check(new_email=rules.email_problem(email))
        if email == user.email:
            raise InvalidInput({"new_email": "is already your email address"})
        await self.confirm_password(user, current_password)
        if await self.session.scalar(select(User.id).where(User.email == email)) is not None:
            raise AlreadyTaken("email")
        return email, await self.email_token(user, EMAIL, new_email=email)

    async def verification_token(self, user: User) -> str:
        """A new link for the account's own address (the earlier one stops working); Conflict when verified."""
        if user.is_verified:
            raise Conflict("Your email address is already verified.")
        return await self.email_token(user, VERIFY)

    async def reset_token_for(self, email: str) -> tuple[User, str] | None:
        """A reset token for the active user with this email, or None (the caller says nothing either way)."""
        user = await self.session.scalar(select(User).where(User.email == rules.normal_email(email)))
        if user is None or not user.is_active:
            return None
        return user, await self.email_token(user, RESET)

    async def reset_password(self, raw: str, new: str) -> User:
        user, _ = await self._use_email_token(raw, RESET)
        rules.check(password=rules.password_problem(new, username=user.username, email=user.email))
        await self._set_password(user, new)
        return user


async def pending_email(session: AsyncSession, user_id: UUID) -> str | None:
    """The address a change of email waits to be confirmed for (the newest link still usable), if any."""
    pending: str | None = await session.scalar(
        select(EmailToken.new_email)
        .where(
            EmailToken.user_id == user_id,
            EmailToken.purpose == EMAIL,
            EmailToken.used_at.is_(None),
            EmailToken.expires_at > utcnow(),
        )
        .order_by(EmailToken.created_at.desc())
        .limit(1)
    )
    return pending


class RefreshTokens:
    """Rotating refresh tokens with reuse detection, one family per sign-in."""

    def __init__(self, session: AsyncSession, settings: Settings) -> None:
        self.session = session
        self.settings = settings

    async def issue(self, user: User, family_id: UUID | None = None) -> IssuedRefresh:
        raw = new_token()
        family = family_id or uuid.uuid4()
        self.session.add(
            RefreshToken(
                user_id=user.id,
                family_id=family,
                token_hash=token_hash(raw),
                expires_at=utcnow() + timedelta(days=self.settings.refresh_token_days),
            )
        )
        await self.session.flush()
        return IssuedRefresh(token=raw, family_id=family)

    async def rotate(self, raw: str) -> tuple[User, IssuedRefresh]:
        """Retire `raw` and issue its successor. A retired token revokes its whole family."""
        now = utcnow()
        token = await self.session.scalar(
            select(RefreshToken).where(RefreshToken.token_hash == token_hash(raw)).with_for_update()
        )
        if token is None or token.revoked_at is not None or token.expires_at <= now:
            raise InvalidCredentials("This refresh token is not valid.")
        if token.replaced_at is not None:
            await self.revoke_family(token.family_id)
            raise RefreshTokenReused(token.user_id, token.family_id)
        user = await self.session.get(User, token.user_id)
        if user is None or not user.is_active:
            raise InvalidCredentials("This refresh token is not valid.")
        token.replaced_at = now
        await self.session.execute(update(SignIn).where(SignIn.id == token.family_id).values(last_used_at=now))
        return user, await self.issue(user, token.family_id)

    async def revoke_family(self, family_id: UUID, user: User | None = None) -> None:
        """End one sign-in: its refresh tokens, and (once announced) the access tokens and streams from it."""
        now = utcnow()
        owners = (
            await self.session.scalars(
                update(RefreshToken)
                .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
                .values(revoked_at=now)
                .returning(RefreshToken.user_id)
            )
        ).all()
        await self.session.execute(
            update(SignIn).where(SignIn.id == family_id, SignIn.revoked_at.is_(None)).values(revoked_at=now)
        )
        users_changed(self.session, {*owners, *([user.id] if user is not None else [])})  # announced on commit
        await self.session.flush()

    async def family_of(self, raw: str, user: User) -> UUID | None:
        family: UUID | None = await self.session.scalar(
            select(RefreshToken.family_id).where(
                RefreshToken.token_hash == token_hash(raw), RefreshToken.user_id == user.id
            )
        )
        return family
