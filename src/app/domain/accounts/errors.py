"""What the accounts rules refuse."""

from __future__ import annotations

from uuid import UUID

from app.domain.errors import Conflict, DomainError, InvalidInput, NotFound

AccountError = DomainError


class AlreadyTaken(Conflict):
    """The email or username belongs to another account."""

    def __init__(self, field: str) -> None:
        super().__init__(f"This {field} is already registered.", field)


class InvalidCredentials(DomainError):
    """Wrong username or password, or an unusable token; deliberately vague."""


class RefreshTokenReused(InvalidCredentials):
    """A refresh token presented again after it was rotated: its whole sign-in (family) has been ended."""

    def __init__(self, user_id: UUID, family_id: UUID) -> None:
        super().__init__("This refresh token was already used; its session has been ended.")
        self.user_id = user_id
        self.family_id = family_id


class InvalidToken(DomainError):
    """An email token that is unknown, expired or already used."""


class UserNotFound(NotFound):
    pass


__all__ = [
    "AccountError",
    "AlreadyTaken",
    "InvalidCredentials",
    "InvalidInput",
    "InvalidToken",
    "RefreshTokenReused",
    "UserNotFound",
]
