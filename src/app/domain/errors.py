"""What domain rules refuse. Each door turns these into its own answer (HTTP problem, CLI message)."""

from __future__ import annotations


class DomainError(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(DomainError):
    """Input breaks a rule; `errors` names each field and what is wrong with it."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


class InvalidQuery(InvalidInput):
    """What to list, or how, is not understood (a filter, a sort, a cursor): a 400, like a query
    parameter that does not parse, rather than the 422 of a body that breaks a rule."""


class NotFound(DomainError):
    pass


class Conflict(DomainError):
    """The request does not fit the resource's current state."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class LimitReached(DomainError):
    """A quota is used up; trying again later may work."""
