"""Delivering email: over SMTP when SMTP_HOST is set, otherwise as .eml files under VAR_DIR/mail/.

Embedded (nothing configured) a person trying the product has no mail server, so each
message is written as an RFC 5322 file and its links are logged, ready to follow.
A failed SMTP send raises, so the actor that called `deliver` is retried.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path

import aiosmtplib
import anyio
import structlog

from app.config import Settings
from app.domain.accounts.emails import OutgoingEmail

log = structlog.get_logger(__name__)

LINK = re.compile(r"https?://[^\s<>\"']+")


def links_in(text: str) -> list[str]:
    """Every http(s) address in a plain-text body, in order."""
    return LINK.findall(text)


def build_message(email: OutgoingEmail, settings: Settings) -> EmailMessage:
    """The RFC 5322 message: From MAIL_FROM, a Date and a Message-ID, text with an optional HTML alternative."""
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = email.to
    message["Subject"] = email.subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=_domain(settings.mail_from))
    message.set_content(email.text, cte=_transfer_encoding(email.text))
    if email.html is not None:
        message.add_alternative(email.html, subtype="html", cte=_transfer_encoding(email.html))
    return message


def _transfer_encoding(body: str) -> str | None:
    """7bit for ASCII bodies, so links stay intact and readable in the raw message; else the default."""
    return "7bit" if body.isascii() and all(len(line) <= 998 for line in body.splitlines()) else None


def _domain(address: str) -> str:
    # make_msgid() would otherwise ask the resolver for this host's FQDN on every message.
    return parseaddr(address)[1].rpartition("@")[2] or "localhost"


def _start_tls(settings: Settings) -> bool | None:
    """aiosmtplib's `start_tls`: never with implicit TLS or SMTP_STARTTLS=false.

    Otherwise STARTTLS is required when credentials are set (a password never crosses the
    wire in clear) and used whenever offered when they are not (e.g. a local Mailpit).
    """
    if settings.smtp_tls or not settings.smtp_starttls:
        return False
    return True if settings.smtp_username else None


async def send_smtp(message: EmailMessage, settings: Settings) -> None:
    """Send through SMTP_HOST; raises aiosmtplib.SMTPException (or a subclass) on any failure."""
    await aiosmtplib.send(
        message,
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username or None,
        password=settings.smtp_password or None,
        use_tls=settings.smtp_tls,
        start_tls=_start_tls(settings),
        timeout=settings.smtp_timeout_seconds,
    )


def write_eml(message: EmailMessage, folder: Path) -> Path:
    """Write `message` as `<UTC time>-<random>.eml` (sortable by time), whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}.eml"
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(message.as_bytes(policy=policy.SMTP))
    partial.replace(path)
    return path


async def deliver(email: OutgoingEmail, settings: Settings) -> None:
    """Send `email` over SMTP, or, with no SMTP_HOST, write it under VAR_DIR/mail/ and log its links."""
    message = build_message(email, settings)
    if settings.smtp_host:
        await send_smtp(message, settings)
        log.info("mail.sent", to=email.to, subject=email.subject, message_id=message["Message-ID"])
        return
    path = await anyio.to_thread.run_sync(write_eml, message, settings.var_path / "mail")
    log.info("mail.written", to=email.to, subject=email.subject, path=str(path), links=links_in(email.text))
