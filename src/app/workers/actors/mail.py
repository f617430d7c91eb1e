"""Sending email off the request path, retried with exponential backoff when the server fails."""

from __future__ import annotations

import aiosmtplib
import msgspec
import structlog

from app.config import Settings, get_settings
from app.domain.accounts.emails import OutgoingEmail
from app.workers.context import async_actor
from app.workers.errors import BROKER_DOWN
from app.workers.mail import deliver

log = structlog.get_logger(__name__)


async def deliver_or_drop(email: OutgoingEmail, settings: Settings) -> None:
    """Deliver `email`; a permanent (5xx) refusal of every recipient is logged and dropped.

    Anything else (connection refused, timeout, a temporary 4xx refusal such as greylisting)
    raises, so that Dramatiq retries the message.
    """
    try:
        await deliver(email, settings)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        if any(error.code < 500 for error in exc.recipients):
            raise
        refusals = [f"{error.recipient}: {error.code} {error.message}" for error in exc.recipients]
        log.warning("mail.refused", to=email.to, subject=email.subject, refusals=refusals)


@async_actor(actor_name="mail.send", max_retries=5, min_backoff=1_000, max_backoff=60_000)
async def send_email(email: dict[str, str | None]) -> None:
    """Deliver one email given as `msgspec.to_builtins(OutgoingEmail)`."""
    await deliver_or_drop(msgspec.convert(email, OutgoingEmail), get_settings())


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
