"""Notifications as the API and the live stream show them."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from app.domain.notifications.models import Notification


class NotificationOut(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    category: str
    title: str
    message: str
    is_read: bool
    task_id: UUID | None
    created_at: datetime
    read_at: datetime | None


def notification_out(notification: Notification) -> NotificationOut:
    return msgspec.convert(notification, NotificationOut, from_attributes=True)
