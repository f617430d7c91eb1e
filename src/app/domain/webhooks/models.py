"""A task's webhook, its deliveries (the outbox) and each user's signing secret."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import DefaultBase, UUIDv7Base
from advanced_alchemy.types import DateTimeUTC, JsonB
from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.domain.clock import utcnow


class TaskWebhook(DefaultBase):
    """Where a task's ends are told, and which ends (`events`: comma-separated, e.g. "succeeded,failed")."""

    __tablename__ = "task_webhook"

    task_id: Mapped[UUID] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[str] = mapped_column(String(64))


class WebhookDelivery(UUIDv7Base):
    """One end of a task to tell its webhook: written with the end, then sent until it succeeds or is given up.

    While `delivering`, `next_attempt_at` is the lease's end: a worker that died mid-send leaves
    it due again then. Unique per (task, attempt, event): a redelivered end writes nothing twice.
    """

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("task_id", "attempt", "event", name="uq_webhook_delivery_task_id_attempt_event"),
        Index("ix_webhook_delivery_status_next_attempt_at", "status", "next_attempt_at"),
    )

    task_id: Mapped[UUID] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(2000))
    event: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonB)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class WebhookSecret(DefaultBase):
    """A user's signing secret (kept in clear: an HMAC needs it), made at first use, replaced on rotation."""

    __tablename__ = "webhook_secret"

    user_id: Mapped[UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
