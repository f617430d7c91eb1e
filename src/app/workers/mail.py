"""Delivering email: over SMTP when SMTP_HOST is set, otherwise as .eml files under VAR_DIR/mail/.

Embedded (nothing configured) a person trying the product has no mail server, so each
message is written as an RFC 5322 file whose path is logged (its links carry secret
tokens, so they stay in the file). A failed send raises MailNotSent (try again later) or
MailRefused (never will be); a message that cannot even be built raises MailUnsendable
(a MailRefused), before any server is dialled.

Header text is sanitised, never trusted: a Subject made from what users typed (a task
title) has every control character and line break turned into a space, runs of spaces
collapsed and its length capped, so it can neither inject headers nor fail the build.
An address cannot be mended that way (it would be someone else's): one with a control
character, or more than one address, makes the message unsendable.

SMTP goes through a circuit breaker (purgatory, one per worker process): after
SMTP_BREAKER_FAILURES failures in a row the server is not tried for
SMTP_BREAKER_RESET_SECONDS, so a dead server costs each waiting message nothing rather
than a connection timeout, and it is not hammered while it restarts.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from email import policy
from email.errors import MessageError
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid, parseaddr
from pathlib import Path

import aiosmtplib
import anyio
import structlog
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from purgatory.typing import CircuitName

from app.config import Settings
from app.domain.accounts.emails import OutgoingEmail

log = structlog.get_logger(__name__)

LINK = re.compile(r"https?://[^\s<>\"']+")
BREAKER = "smtp"


class MailNotSent(Exception):
    """The mail server did not take the message this time (down, timed out, a temporary 4xx); try later."""


class MailRefused(Exception):
    """The mail server refused the message for good (5xx for every recipient): trying again cannot help."""


class MailUnsendable(MailRefused):
    """The message cannot be built (a bad address, a header the email library rejects): no retry can help."""


#: Longest Subject sent, in characters (RFC 5322 recommends lines under 78; folding handles the rest).
SUBJECT_MAX = 200
#: Characters that may not stand in a header: C0 and C1 controls, DEL, and Unicode's line and paragraph separators.
_NOT_IN_HEADERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def header_text(value: str, limit: int = SUBJECT_MAX) -> str:
    """`value` fit for a header: control characters and line breaks become spaces, runs of spaces one, capped."""
    text = " ".join(_NOT_IN_HEADERS.sub(" ", value).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _address(value: str) -> str:
    """`value` as one recipient address; MailUnsendable when it has control characters or names several."""
    if _NOT_IN_HEADERS.search(value) or len(getaddresses([value])) != 1 or not parseaddr(value)[1]:
        raise MailUnsendable(f"not one valid recipient address: {value!r}")
    return value


def _permanent(exc: BaseException) -> bool:
    """A refusal about this message, not a sign that the server is down."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(error.code >= 500 for error in exc.recipients)
    return isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 500


def _log_breaker(name: CircuitName, event_type: str, event: object) -> None:
    if event_type == "state_changed":
        state = getattr(event, "state", "")
        if state == "opened":
            log.warning("mail.server_down", breaker=name)
        elif state == "closed":
            log.info("mail.server_back", breaker=name)


_breakers: dict[tuple[int, float], AsyncCircuitBreakerFactory] = {}


def _breaker_factory(settings: Settings) -> AsyncCircuitBreakerFactory:
    """One breaker store per process and breaker setting (tests use several settings in one process)."""
    key = (settings.smtp_breaker_failures, settings.smtp_breaker_reset_seconds)
    if key not in _breakers:
        factory = AsyncCircuitBreakerFactory(
            default_threshold=settings.smtp_breaker_failures,
            default_ttl=settings.smtp_breaker_reset_seconds,
            exclude=[(Exception, _permanent)],
        )
        factory.add_listener(_log_breaker)
        _breakers[key] = factory
    return _breakers[key]


def links_in(text: str) -> list[str]:
    """Every http(s) address in a plain-text body, in order."""
    return LINK.findall(text)


def build_message(email: OutgoingEmail, settings: Settings) -> EmailMessage:
    """The RFC 5322 message: From MAIL_FROM, a Date and a Message-ID, text with an optional HTML alternative.

    Raises MailUnsendable when it cannot be built or written out as it would go on the wire.
    """
    try:
        message = EmailMessage()
        message["From"] = settings.mail_from
        message["To"] = _address(email.to)
        message["Subject"] = header_text(email.subject)
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = make_msgid(domain=_domain(settings.mail_from))
        message.set_content(email.text, cte=_transfer_encoding(email.text))
        if email.html is not None:
            message.add_alternative(email.html, subtype="html", cte=_transfer_encoding(email.html))
        message.as_bytes(policy=policy.SMTP)  # what a send would do: fail here, before any server is dialled
    except (ValueError, TypeError, LookupError, MessageError) as exc:
        raise MailUnsendable(f"{type(exc).__name__}: {exc}") from exc
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
    """Send through SMTP_HOST, behind the breaker; raises MailNotSent or MailRefused."""
    try:
        breaker = await _breaker_factory(settings).get_breaker(f"{BREAKER}:{settings.smtp_host}:{settings.smtp_port}")
        async with breaker:
            await _send(message, settings)
    except OpenedState:
        raise MailNotSent("the mail server is failing; not tried until its breaker closes") from None
    except (aiosmtplib.SMTPException, OSError) as exc:
        if _permanent(exc):
            raise MailRefused(str(exc)) from exc
        raise MailNotSent(f"{type(exc).__name__}: {exc}") from exc


async def _send(message: EmailMessage, settings: Settings) -> None:
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
    """Send `email` over SMTP, or, with no SMTP_HOST, write it under VAR_DIR/mail/ and log where."""
    message = build_message(email, settings)
    if settings.smtp_host:
        await send_smtp(message, settings)
        log.info("mail.sent", to=email.to, subject=message["Subject"], message_id=message["Message-ID"])
        return
    path = await anyio.to_thread.run_sync(write_eml, message, settings.var_path / "mail")
    log.info("mail.written", to=email.to, subject=message["Subject"], path=str(path))
