"""What crosses the edge of the accounts domain: msgspec Structs for input and output."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec


class UserOut(msgspec.Struct, frozen=True, kw_only=True):
    """A user as the API shows it; never a password hash."""

    id: UUID
    email: str
    username: str
    full_name: str | None
    is_active: bool
    is_verified: bool
    is_superuser: bool
    email_notifications: bool
    created_at: datetime


class Registration(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    email: str
    username: str
    password: str
    full_name: str | None = None


class ProfileChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    full_name: str | msgspec.UnsetType | None = msgspec.UNSET
    email_notifications: bool | msgspec.UnsetType = msgspec.UNSET


class PasswordChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    current_password: str
    new_password: str


class UserFlags(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    is_active: bool | msgspec.UnsetType = msgspec.UNSET
    is_superuser: bool | msgspec.UnsetType = msgspec.UNSET


def user_out(user: object) -> UserOut:
    return msgspec.convert(user, UserOut, from_attributes=True)
