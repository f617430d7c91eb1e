"""Sending email off the request path.

Account emails (`mail.send`) are retried by Dramatiq with exponential backoff. Emails
about notifications (`notifications.email`) live in the notification's row until sent
(see app.domain.notifications.emails): the actor claims one, sends it and records the
outcome, and `notifications.send_due_emails` hands back whatever is still due, so no
notification email is lost to a crash, a broker outage or a dead mail server. A message
that cannot be built (MailUnsendable) fails once, with one `mail.unsendable` error line,
and is never retried.

A password reset (`mail.password_reset`) is asked for with nothing but the address: the
request handler only queues it, the same work whether or not an account has that
address, so its answer time tells nothing; the lookup, the token and the email happen
here.
"""

from __future__ import annotations

from uuid import UUID

import msgspec
import structlog
from periodiq import cron

from app.config import Settings, get_settings
from app.domain.accounts.emails import OutgoingEmail, reset_email, reset_link
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.services import AccountService
from app.domain.notifications.emails import NotificationEmails
from app.workers.context import async_actor
from app.workers.errors import BROKER_DOWN
from app.workers.mail import MailNotSent, MailRefused, MailUnsendable, deliver
from app.workers.runtime import runtime
from app.workers.sweeps import follow_up, queue_each

log = structlog.get_logger(__name__)


async def deliver_or_drop(email: OutgoingEmail, settings: Settings) -> None:
    """Deliver `email`; a permanent refusal is logged and dropped, MailNotSent propagates (so Dramatiq retries)."""
    try:
        await deliver(email, settings)
    except MailUnsendable as exc:
        log.error("mail.unsendable", to=email.to, error=str(exc))
    except MailRefused as exc:
        log.warning("mail.refused", to=email.to, subject=email.subject, error=str(exc))


@async_actor(actor_name="mail.send", max_retries=5, min_backoff=1_000, max_backoff=60_000)
async def send_email(email: dict[str, str | None]) -> None:
    """Deliver one email given as `msgspec.to_builtins(OutgoingEmail)`."""
    await deliver_or_drop(msgspec.convert(email, OutgoingEmail), get_settings())


@async_actor(actor_name="mail.password_reset", max_retries=5, min_backoff=1_000, max_backoff=60_000)
async def send_password_reset(address: str) -> None:
    """Email a reset link to the active account with this address, if there is one (else nothing happens).

    A retry (the mail server was down) makes a new token, which also ends the one before.
    """
    settings = get_settings()
    async with runtime().session() as session, session.begin():
        found = await AccountService(session, Passwords(settings), settings).reset_token_for(address)
    if found is None:
        return
    user, raw = found
    link = reset_link(settings.base_url, raw)
    await deliver_or_drop(
        reset_email(user.email, user.username, link, valid_minutes=settings.email_token_minutes), settings
    )


def enqueue_password_reset(address: str) -> bool:
    """Queue a password reset for `address` (the handler's whole work, known address or not); False if not queued."""
    try:
        send_password_reset.send(address)
    except BROKER_DOWN:
        log.error("mail.not_queued", actor="mail.password_reset")
        return False
    return True


def enqueue_email(email: OutgoingEmail) -> bool:
    """Queue `email` for delivery; call it after the transaction that decided to send it has committed.

    False when the broker is unreachable: the email is logged as not sent (account emails
    can be asked for again), and the request that wanted it still succeeds.
    """
    try:
        send_email.send(msgspec.to_builtins(email))
    except BROKER_DOWN:
        log.error("mail.not_queued", to=email.to, subject=email.subject)
        return False
    return True


@async_actor(actor_name="notifications.email", max_retries=0)
async def email_notification(notification_id: str) -> None:
    """Send the pending email of one notification, once, and record how it went."""
    settings = get_settings()
    rt = runtime()
    key = UUID(notification_id)
    async with rt.session() as session, session.begin():
        email = await NotificationEmails(session, settings).claim(key)
    if email is None:
        return  # already sent, or another worker holds it
    try:
        await deliver(email, settings)
    except MailUnsendable as exc:
        async with rt.session() as session, session.begin():
            await NotificationEmails(session, settings).unsendable(key)
        log.error("mail.unsendable", notification_id=notification_id, to=email.to, error=str(exc))
    except MailRefused as exc:
        async with rt.session() as session, session.begin():
            await NotificationEmails(session, settings).refused(key)
        log.warning("mail.refused", notification_id=notification_id, to=email.to, error=str(exc))
    except MailNotSent as exc:
        async with rt.session() as session, session.begin():
            status = await NotificationEmails(session, settings).failed(key)
        log.warning("mail.not_sent", notification_id=notification_id, to=email.to, error=str(exc), status=status)
    else:
        async with rt.session() as session, session.begin():
            await NotificationEmails(session, settings).sent(key)


def queue_notification_email(notification_id: UUID) -> bool:
    """Hand a committed pending email to a worker; False when the broker is unreachable (the sweeper will)."""
    try:
        email_notification.send(str(notification_id))
    except BROKER_DOWN:
        log.warning("mail.not_queued", notification_id=str(notification_id))
        return False
    return True


@async_actor(actor_name="notifications.send_due_emails", periodic=cron("* * * * *"), max_retries=0)
async def send_due_emails() -> None:
    """Queue every pending notification email whose time has come (first tries missed, retries, leases run out).

    Cron runs it each minute; the scheduled run sends one follow-up 30 s later, as the task sweeper does.
    """
    follow_up(send_due_emails)
    async with runtime().session() as session:
        due = await NotificationEmails(session, get_settings()).due()
    if due:
        log.info("mail.due_queued", count=await queue_each(due, queue_notification_email), due=len(due))
