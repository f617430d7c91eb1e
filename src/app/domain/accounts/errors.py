"""What the accounts rules refuse."""

from __future__ import annotations

from app.domain.errors import Conflict, DomainError, InvalidInput, NotFound

AccountError = DomainError


class AlreadyTaken(Conflict):
    """The email or username belongs to another account."""

    def __init__(self, field: str) -> None:
        super().__init__(f"This {field} is already registered.", field)


class InvalidCredentials(DomainError):
    """Wrong username or password, or an unusable token; deliberately vague."""


class InvalidToken(DomainError):
    """An email token that is unknown, expired or already used."""


class UserNotFound(NotFound):
    pass


__all__ = ["AccountError", "AlreadyTaken", "InvalidCredentials", "InvalidInput", "InvalidToken", "UserNotFound"]
