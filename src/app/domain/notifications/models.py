"""The event log: every change a browser must see, one row each, in commit order."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import IdentityBase
from advanced_alchemy.types import DateTimeUTC, JsonB
from sqlalchemy import ForeignKey, Index, String
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
