"""The notification email outbox (app.domain.notifications.emails) on the run's real database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings, get_settings
from app.domain.accounts.models import User
from app.domain.clock import utcnow
from app.domain.models import Notification
from app.domain.notifications.emails import ABANDONED, PENDING, SENT, UNSENDABLE, NotificationEmails, want_email
from app.domain.notifications.events import EventLog
from app.domain.notifications.services import notify_once
from app.domain.tasks.models import Task
from app.workers.actors.mail import queue_notification_email
from tests.in_process_workers import app_with_workers
from tests.smtp import SmtpServer

pytestmark = pytest.mark.usefixtures("migrated")


def outbox_settings(**changes: object) -> Settings:
    return msgspec.structs.replace(get_settings(), mail_retry_min_seconds=60.0, **changes)  # type: ignore[arg-type]


async def a_notification(
    session: AsyncSession, *, wants_email: bool = True, email: str | None = None, task_title: str | None = None
) -> tuple[User, Notification]:
    """A notification (about a task titled `task_title`, when given) whose email is pending."""
    name = f"u{uuid.uuid4().hex[:10]}"
    owner = User(email=email or f"{name}@example.com", username=name, email_notifications=wants_email)
    session.add(owner)
    await session.flush()
    task_id = uuid.uuid4()
    if task_title is not None:
        task = Task(user_id=owner.id, kind="demo", title=task_title, status="succeeded")
        session.add(task)
        await session.flush()
        task_id = task.id
    created = await notify_once(
        session,
        EventLog(session),
        user_id=owner.id,
        category="task",
        title="Task completed",
        message="“Report” completed.",
        task_id=task_id,
        dedupe_key=f"test:{uuid.uuid4()}",
    )
    assert created is not None
    want_email(created, owner)
    await session.commit()
    return owner, created


async def test_a_pending_email_is_claimed_once_and_sent_once(db_session: AsyncSession) -> None:
    owner, notification = await a_notification(db_session)
    outbox = NotificationEmails(db_session, outbox_settings())
    assert notification.id in await outbox.due()
    email = await outbox.claim(notification.id)
    assert email is not None
    assert (email.to, email.subject) == (owner.email, "Task completed")
    assert f"/tasks/{notification.task_id}" in email.text
    # A duplicate message finds it held (leased), and the sweeper does not hand it out again.
    assert await outbox.claim(notification.id) is None
    assert notification.id not in await outbox.due()
    await outbox.sent(notification.id)
    await db_session.commit()
    await db_session.refresh(notification)
    assert (notification.email_status, notification.email_attempts, notification.email_due_at) == (SENT, 1, None)
    assert await outbox.claim(notification.id) is None


async def test_a_failed_email_waits_longer_after_each_failure(db_session: AsyncSession) -> None:
    _, notification = await a_notification(db_session)
    outbox = NotificationEmails(db_session, outbox_settings(mail_retry_max_seconds=150.0))
    delays = []
    for _ in range(4):
        before = utcnow()
        notification.email_due_at = before  # its time has come
        await db_session.commit()
        assert await outbox.claim(notification.id) is not None
        assert await outbox.failed(notification.id) == PENDING
        await db_session.commit()
        await db_session.refresh(notification)
        assert notification.email_due_at is not None
        delays.append(round((notification.email_due_at - before).total_seconds() / 10) * 10)
        assert notification.id not in await outbox.due()
    assert delays == [60, 120, 150, 150]  # doubling from MAIL_RETRY_MIN_SECONDS, capped by MAIL_RETRY_MAX_SECONDS


async def test_an_email_is_given_up_only_after_mail_give_up_hours(db_session: AsyncSession) -> None:
    _, notification = await a_notification(db_session)
    outbox = NotificationEmails(db_session, outbox_settings(mail_give_up_hours=1.0))
    notification.created_at = utcnow() - timedelta(minutes=59)
    await db_session.commit()
    assert await outbox.claim(notification.id) is not None
    assert await outbox.failed(notification.id) == PENDING
    notification.created_at = utcnow() - timedelta(minutes=61)
    notification.email_due_at = utcnow()
    await db_session.commit()
    assert await outbox.claim(notification.id) is not None
    assert await outbox.failed(notification.id) == ABANDONED
    await db_session.commit()
    assert notification.id not in await outbox.due()


async def test_no_email_is_kept_for_a_user_who_does_not_want_them(db_session: AsyncSession) -> None:
    _, notification = await a_notification(db_session, wants_email=False)
    assert (notification.email_status, notification.email_due_at) == (None, None)
    assert notification.id not in await NotificationEmails(db_session, outbox_settings()).due()


@pytest.fixture
def workers(mode: str) -> Iterator[None]:
    with app_with_workers(mode):
        yield


async def email_state(session: AsyncSession, notification: Notification, until: set[str]) -> tuple[str | None, int]:
    """(email_status, email_attempts) once the status is one of `until` (20 s at most)."""
    deadline = time.monotonic() + 20
    while True:
        await session.refresh(notification)
        await session.commit()  # end the read, so the next one sees the worker's commits
        if notification.email_status in until or time.monotonic() > deadline:
            return notification.email_status, notification.email_attempts
        await asyncio.sleep(0.1)


@pytest.mark.usefixtures("workers")
async def test_a_task_title_with_a_line_break_is_emailed_in_a_one_line_subject(
    db_session: AsyncSession, smtp: SmtpServer
) -> None:
    """It once made the build fail with ValueError, and the outbox tried again for MAIL_GIVE_UP_HOURS."""
    owner, notification = await a_notification(db_session, task_title="Report\nBcc: victim@example.com")
    assert queue_notification_email(notification.id)
    received = smtp.wait_for(lambda m: owner.email in m.rcpt_tos, timeout=20)
    assert received.message["Subject"] == "Task completed: Report Bcc: victim@example.com"
    assert received.rcpt_tos == [owner.email]
    assert await email_state(db_session, notification, {SENT}) == (SENT, 1)


@pytest.mark.usefixtures("workers")
async def test_an_email_that_cannot_be_built_is_recorded_as_such_and_not_tried_again(
    db_session: AsyncSession,
) -> None:
    _, notification = await a_notification(db_session, email=f"u{uuid.uuid4().hex[:8]}@example.com\nBcc: x@y.z")
    assert queue_notification_email(notification.id)
    assert await email_state(db_session, notification, {UNSENDABLE}) == (UNSENDABLE, 1)
    assert notification.email_due_at is None
    outbox = NotificationEmails(db_session, outbox_settings())
    assert notification.id not in await outbox.due()
    assert await outbox.claim(notification.id) is None
