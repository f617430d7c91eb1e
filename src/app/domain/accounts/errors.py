"""What the accounts rules refuse; the doors turn these into HTTP problems or CLI messages."""

from __future__ import annotations


class AccountError(Exception):
    """Base of the accounts domain's refusals."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(AccountError):
    """Input breaks a rule; `errors` names each field and what is wrong with it."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


class AlreadyTaken(AccountError):
    """The email or username belongs to another account."""

    def __init__(self, field: str) -> None:
        super().__init__(f"This {field} is already registered.")
        self.field = field


class InvalidCredentials(AccountError):
    """Wrong username or password, or an unusable token; deliberately vague."""


class InvalidToken(AccountError):
    """An email token that is unknown, expired or already used."""


class UserNotFound(AccountError):
    pass
