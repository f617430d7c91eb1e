"""Emails about notifications, kept in the notification's own row until sent (an outbox).

A notification whose owner wants email is written `pending` in the same transaction as
the notification itself. The mail actor claims it (a lease: `email_due_at` moves ahead
by MAIL_LEASE_SECONDS, so a duplicate message finds nothing to do), sends it and marks it
`sent`; a failure puts it back with a growing delay. The sweeper hands every pending email
whose time has come back to the mail actor, so a crash, a broker outage or a dead mail
server only delays an email. It is given up (`abandoned`) after MAIL_GIVE_UP_HOURS; a
permanent refusal by the server (`refused`) and a message that cannot be built at all
(`unsendable`, e.g. an address with a line break) are not retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts.emails import OutgoingEmail
from app.domain.accounts.models import User
from app.domain.clock import utcnow
from app.domain.notifications.models import Notification
from app.domain.tasks.models import Task

PENDING = "pending"
SENT = "sent"
REFUSED = "refused"
ABANDONED = "abandoned"
UNSENDABLE = "unsendable"


def want_email(notification: Notification, owner: User) -> bool:
    """Mark a new notification's email pending when its owner asked for email; True when so."""
    if not owner.email_notifications:
        return False
    notification.email_status = PENDING
    notification.email_due_at = utcnow()
    return True


def notification_email(
    notification: Notification, owner: User, base_url: str, task_title: str | None = None
) -> OutgoingEmail:
    """Subject "<title>: <task title>"; the message and a link to the task (or to the notifications page)."""
    path = f"/tasks/{notification.task_id}" if notification.task_id else "/notifications"
    return OutgoingEmail(
        to=owner.email,
        subject=f"{notification.title}: {task_title}" if task_title else notification.title,
        text=f"{notification.message}\n\nSee it at {base_url.rstrip('/')}{path}\n",
    )


class NotificationEmails:
    """The outbox's transitions; each call runs in the caller's transaction."""

    def __init__(self, session: AsyncSession, settings: Settings) -> None:
        self.session = session
        self.settings = settings

    async def claim(self, notification_id: UUID) -> OutgoingEmail | None:
        """Take the email for one send, or None when it is not pending or someone else holds it."""
        now = utcnow()
        claimed = await self.session.scalar(
            update(Notification)
            .where(
                Notification.id == notification_id,
                Notification.email_status == PENDING,
                Notification.email_due_at <= now,
            )
            .values(
                email_due_at=now + timedelta(seconds=self.settings.mail_lease_seconds),
                email_attempts=Notification.email_attempts + 1,
            )
            .returning(Notification.id)
        )
        if claimed is None:
            return None
        notification, owner, task_title = (
            await self.session.execute(
                select(Notification, User, Task.title)
                .join(User, User.id == Notification.user_id)
                .outerjoin(Task, Task.id == Notification.task_id)
                .where(Notification.id == claimed)
            )
        ).one()
        return notification_email(notification, owner, self.settings.base_url, task_title)

    async def sent(self, notification_id: UUID) -> None:
        await self._end(notification_id, SENT)

    async def refused(self, notification_id: UUID) -> None:
        await self._end(notification_id, REFUSED)

    async def unsendable(self, notification_id: UUID) -> None:
        await self._end(notification_id, UNSENDABLE)

    async def failed(self, notification_id: UUID) -> str | None:
        """Put a claimed email back for a later try: PENDING, or ABANDONED when it is too old; None if gone."""
        notification = await self.session.get(Notification, notification_id)
        if notification is None or notification.email_status != PENDING:
            return None
        now = utcnow()
        if now - notification.created_at > timedelta(hours=self.settings.mail_give_up_hours):
            notification.email_status = ABANDONED
            notification.email_due_at = None
            return ABANDONED
        notification.email_due_at = now + self.retry_delay(notification.email_attempts)
        return PENDING

    def retry_delay(self, attempts: int) -> timedelta:
        """MAIL_RETRY_MIN_SECONDS doubling with each attempt, up to MAIL_RETRY_MAX_SECONDS."""
        seconds = self.settings.mail_retry_min_seconds * 2 ** max(0, attempts - 1)
        return timedelta(seconds=min(seconds, self.settings.mail_retry_max_seconds))

    async def due(self, limit: int = 200) -> Sequence[UUID]:
        """Pending emails whose time has come, oldest first (for the sweeper)."""
        result = await self.session.scalars(
            select(Notification.id)
            .where(Notification.email_status == PENDING, Notification.email_due_at <= utcnow())
            .order_by(Notification.email_due_at)
            .limit(limit)
        )
        return result.all()

    async def _end(self, notification_id: UUID, status: str) -> None:
        await self.session.execute(
            update(Notification)
            .where(Notification.id == notification_id, Notification.email_status == PENDING)
            .values(email_status=status, email_due_at=None)
        )
