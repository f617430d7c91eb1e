"""The event log: every change a browser must see, one row each, in commit order."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import IdentityBase, UUIDv7Base
from advanced_alchemy.types import DateTimeUTC, JsonB
from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.domain.clock import utcnow


def _now() -> datetime:
    return datetime.now(UTC)


class Event(IdentityBase):
    """One event. `user_id` NULL means every user sees it (system announcements)."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_user_id_id", "user_id", "id"),)

    user_id: Mapped[UUID | None] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), default=None)
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonB, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow, index=True)


class Notification(UUIDv7Base):
    """What a user is told, kept until they delete it. `dedupe_key` makes "once per event" a constraint."""

    __tablename__ = "notification"
    __table_args__ = (
        Index("ix_notification_user_id_created_at", "user_id", "created_at"),
        Index("ix_notification_email_due_at", "email_due_at"),
    )

    user_id: Mapped[UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    category: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(String(2000))
    is_read: Mapped[bool] = mapped_column(default=False)
    task_id: Mapped[UUID | None] = mapped_column(default=None)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    #: The email about it (see notifications.emails): NULL (none wanted), pending, sent, refused, abandoned, or
    #: unsendable (a message that can never be built: tried once, never retried).
    email_status: Mapped[str | None] = mapped_column(String(16), default=None)
    email_attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    #: When a pending email may next be tried; NULL once it is no longer pending.
    email_due_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
