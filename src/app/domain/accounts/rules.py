"""Input rules for accounts, shared by the API, the pages and the CLI."""

from __future__ import annotations

import re

from app.domain.accounts.errors import InvalidInput
from app.domain.text import control_problem

USERNAME = re.compile(r"^[a-z0-9_.-]{3,32}$")
#: Any character of an address but @, whitespace and control characters (see app.domain.text).
_ADDRESS = r"[^@\s\x00-\x1f\x7f-\x9f]"
EMAIL = re.compile(rf"^{_ADDRESS}{{1,64}}@{_ADDRESS}+\.{_ADDRESS}{{2,}}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
MAX_FULL_NAME = 200


def normal_email(email: str) -> str:
    return email.strip().lower()


def normal_username(username: str) -> str:
    return username.strip().lower()


def email_problem(email: str) -> str | None:
    if len(email) > 320 or not EMAIL.match(email):
        return "must be a valid email address"
    return None


def username_problem(username: str) -> str | None:
    if not USERNAME.match(username):
        return "must be 3-32 characters of a-z, 0-9, _ . -"
    return None


def password_problem(password: str, *, username: str = "", email: str = "") -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"must be at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"must be at most {MAX_PASSWORD} characters"
    if password.lower() in {username.lower(), email.lower()} - {""}:
        return "must not be your username or email"
    return None


def full_name_problem(full_name: str | None) -> str | None:
    if full_name is not None and len(full_name) > MAX_FULL_NAME:
        return f"must be at most {MAX_FULL_NAME} characters"
    return control_problem(full_name)


def check(**problems: str | None) -> None:
    """Raise InvalidInput naming every field whose rule failed."""
    found = {field: message for field, message in problems.items() if message}
    if found:
        raise InvalidInput(found)
