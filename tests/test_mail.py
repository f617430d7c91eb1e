"""Outgoing email: composing, delivery over SMTP to a real server, .eml files without one, the actor."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import urlsplit

import aiosmtplib
import dramatiq
import msgspec
import pytest

from app.config import Settings, get_settings
from app.config.redaction import redact
from app.domain.accounts.emails import (
    OutgoingEmail,
    reset_email,
    reset_link,
    verification_email,
    verification_link,
)
from app.workers import broker
from app.workers.actors.mail import deliver_or_drop, enqueue_email, send_email
from app.workers.mail import SUBJECT_MAX, MailNotSent, MailRefused, MailUnsendable, deliver, header_text, links_in
from tests.servers import free_port
from tests.smtp import SmtpServer

REFUSED = "nobody@example.com"
TOKEN = "abc+/=DEF_-"  # characters that must be encoded in a query string


@pytest.fixture(scope="module")
def own_smtp() -> Iterator[SmtpServer]:
    """A server of this module's own, which refuses REFUSED with a 550."""
    with SmtpServer(refuse=[REFUSED]) as server:
        yield server


def smtp_settings(port: int) -> Settings:
    """Plain SMTP to 127.0.0.1:port, whatever this environment configures."""
    return msgspec.structs.replace(
        get_settings(),
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_starttls=False,
        smtp_tls=False,
        smtp_username="",
        smtp_password="",
        smtp_timeout_seconds=5,
    )


def file_settings() -> Settings:
    return msgspec.structs.replace(get_settings(), smtp_host="")


def unique_address() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


def read_eml(path: Path) -> EmailMessage:
    with path.open("rb") as file:
        message = BytesParser(policy=policy.default).parse(file)
    assert isinstance(message, EmailMessage)
    return message


def plain_text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


# --- composing ----------------------------------------------------------------------------


def test_links_point_at_the_pages_and_carry_the_token_encoded_in_the_path() -> None:
    assert verification_link("https://jobs.example/", TOKEN) == "https://jobs.example/verify-email/abc%2B%2F%3DDEF_-"
    assert reset_link("https://jobs.example", TOKEN) == "https://jobs.example/reset-password/abc%2B%2F%3DDEF_-"


@pytest.mark.parametrize("link", [verification_link, reset_link])
def test_a_links_token_is_redacted_from_log_text(link: Callable[[str, str], str]) -> None:
    url = link("https://jobs.example", "s3cr3t-T0ken")
    old_style = url.replace("/s3cr3t-T0ken", "?token=s3cr3t-T0ken")
    for text in (f"GET {url} 200", f"mail.send({{'text': 'open {old_style}\\n'}})", f"path={urlsplit(url).path}"):
        redacted = redact(text)
        assert "s3cr3t-T0ken" not in redacted
        assert "[redacted]" in redacted
    assert redact("GET /api/v1/tasks?status=queued 200") == "GET /api/v1/tasks?status=queued 200"


def test_the_verification_email_asks_to_confirm_with_its_link() -> None:
    link = verification_link("http://127.0.0.1:8000", TOKEN)
    email = verification_email("ada@example.com", "ada", link)
    assert email.to == "ada@example.com"
    assert email.subject == "Confirm your email address"
    assert link in email.text
    assert links_in(email.text) == [link]
    assert "ada" in email.text
    assert "48 hours" in email.text
    assert email.html is not None
    assert f'href="{link}"' in email.html


def test_the_reset_email_is_valid_one_hour_single_use_and_ignorable() -> None:
    link = reset_link("http://127.0.0.1:8000", TOKEN)
    email = reset_email("ada@example.com", "ada", link)
    assert email.subject == "Reset your password"
    assert links_in(email.text) == [link]
    assert "valid for 1 hour" in email.text
    assert "only once" in email.text
    assert "ignore this email" in email.text
    assert email.html is not None
    assert "valid for 1 hour" in email.html
    assert f'href="{link}"' in email.html
    assert "valid for 2 hours" in reset_email("ada@example.com", "ada", link, valid_minutes=120).text


def test_user_text_is_escaped_in_the_html() -> None:
    email = verification_email("ada@example.com", "<b>ada</b>", "http://x/verify-email/a?b=1&c=2")
    assert email.html is not None
    assert "<b>ada</b>" not in email.html
    assert "&lt;b&gt;ada&lt;/b&gt;" in email.html
    assert 'href="http://x/verify-email/a?b=1&amp;c=2"' in email.html


# --- delivery -----------------------------------------------------------------------------


async def test_deliver_over_smtp_arrives_with_headers_and_link(own_smtp: SmtpServer) -> None:
    settings = smtp_settings(own_smtp.port)
    to = unique_address()
    link = reset_link(settings.base_url, TOKEN)
    await deliver(reset_email(to, "ada", link), settings)

    received = own_smtp.wait_for(lambda m: to in m.rcpt_tos, timeout=5)
    message = received.message
    assert message["To"] == to
    assert message["From"] == settings.mail_from
    assert message["Subject"] == "Reset your password"
    assert message["Message-ID"].endswith("@localhost>")
    assert message["Date"]
    assert link in received.text
    assert received.html is not None
    assert link in received.html
    assert received.mail_from == "no-reply@localhost"


async def test_non_ascii_text_and_subject_survive_the_trip(own_smtp: SmtpServer) -> None:
    to = unique_address()
    email = OutgoingEmail(to=to, subject="Grüße, Zoë", text="Hallo Zoë ✓\n", html="<p>Hallo Zoë ✓</p>")
    await deliver(email, smtp_settings(own_smtp.port))
    received = own_smtp.wait_for(lambda m: to in m.rcpt_tos)
    assert received.message["Subject"] == "Grüße, Zoë"
    assert received.text.splitlines() == ["Hallo Zoë ✓"]
    assert received.html is not None
    assert "Hallo Zoë ✓" in received.html


async def test_without_an_smtp_host_the_message_is_an_eml_file_under_var_mail() -> None:
    settings = file_settings()
    folder = settings.var_path / "mail"
    before = set(folder.glob("*")) if folder.exists() else set()
    to = unique_address()
    link = verification_link(settings.base_url, TOKEN)
    await deliver(verification_email(to, "ada", link), settings)

    new = sorted(set(folder.glob("*")) - before)
    assert len(new) == 1, new
    path = new[0]
    assert re.fullmatch(r"\d{8}T\d{12}Z-[0-9a-f]{8}\.eml", path.name), path.name
    message = read_eml(path)
    assert message["To"] == to
    assert message["From"] == settings.mail_from
    assert message["Subject"] == "Confirm your email address"
    assert message["Message-ID"]
    assert link in plain_text(message)
    assert link.encode() in path.read_bytes()  # readable as is, for a person opening the file


async def test_eml_file_names_sort_by_time() -> None:
    settings = file_settings()
    folder = settings.var_path / "mail"
    email = OutgoingEmail(to=unique_address(), subject="order", text="one")
    before = set(folder.glob("*.eml")) if folder.exists() else set()
    for _ in range(3):
        await deliver(email, settings)
    new = set(folder.glob("*.eml")) - before
    in_order = sorted(new, key=lambda p: p.stat().st_mtime_ns)
    assert sorted(new) == in_order


async def test_a_dead_smtp_server_makes_deliver_raise_so_the_message_is_tried_again() -> None:
    settings = smtp_settings(free_port())  # nothing listens there
    email = OutgoingEmail(to=unique_address(), subject="lost", text="hello")
    started = time.monotonic()
    with pytest.raises(MailNotSent) as raised:
        await deliver(email, settings)
    assert isinstance(raised.value.__cause__, aiosmtplib.SMTPConnectError)
    with pytest.raises(MailNotSent):
        await deliver_or_drop(email, settings)
    assert time.monotonic() - started < 5


async def test_a_permanently_refused_recipient_is_dropped_not_retried(own_smtp: SmtpServer) -> None:
    settings = smtp_settings(own_smtp.port)
    email = OutgoingEmail(to=REFUSED, subject="refused", text="hello")
    with pytest.raises(MailRefused):
        await deliver(email, settings)
    await deliver_or_drop(email, settings)  # logged, no exception: Dramatiq will not retry it
    assert all(m.message["Subject"] != "refused" for m in own_smtp.messages)


async def test_the_breaker_stops_trying_a_dead_server_then_tries_again() -> None:
    """After SMTP_BREAKER_FAILURES failures the server is not even dialled until the breaker's time is up."""
    later = SmtpServer()  # its port is chosen; nothing listens there until it starts below
    settings = msgspec.structs.replace(
        smtp_settings(later.port), smtp_breaker_failures=2, smtp_breaker_reset_seconds=1.0
    )
    email = OutgoingEmail(to=unique_address(), subject="breaker", text="hello")
    for _ in range(2):
        with pytest.raises(MailNotSent) as raised:
            await deliver(email, settings)
        assert isinstance(raised.value.__cause__, aiosmtplib.SMTPConnectError)
    with later:
        # The server is back, but the breaker is open: no connection is attempted.
        with pytest.raises(MailNotSent) as raised:
            await deliver(email, settings)
        assert raised.value.__cause__ is None
        assert "breaker" in str(raised.value)
        assert later.messages == []
        time.sleep(1.1)
        await deliver(email, settings)  # half-open: one try, which succeeds and closes the breaker
        await deliver(email, settings)
        assert [m.message["Subject"] for m in later.messages] == ["breaker", "breaker"]


async def test_refusals_do_not_open_the_breaker(own_smtp: SmtpServer) -> None:
    settings = msgspec.structs.replace(smtp_settings(own_smtp.port), smtp_breaker_failures=1)
    for _ in range(3):
        with pytest.raises(MailRefused):
            await deliver(OutgoingEmail(to=REFUSED, subject="no", text="x"), settings)
    await deliver(OutgoingEmail(to=unique_address(), subject="still open", text="x"), settings)
    assert own_smtp.wait_for(lambda m: m.message["Subject"] == "still open")


async def test_a_subject_from_user_text_is_one_clean_line(own_smtp: SmtpServer) -> None:
    """A task title with a line break once failed the build (ValueError) and was retried for ever."""
    to = unique_address()
    subject = "Task completed: Report\r\nBcc: victim@example.com\x1b[31m\u2028\x00  done\t!"
    await deliver(OutgoingEmail(to=to, subject=subject, text="hello"), smtp_settings(own_smtp.port))
    received = own_smtp.wait_for(lambda m: to in m.rcpt_tos)
    assert received.message["Subject"] == "Task completed: Report Bcc: victim@example.com [31m done !"
    assert received.rcpt_tos == [to]
    assert received.message["Bcc"] is None


def test_a_long_subject_is_capped() -> None:
    assert header_text("x" * 500) == "x" * (SUBJECT_MAX - 1) + "…"
    assert header_text(" a \n\n b ") == "a b"
    assert header_text("Grüße, Zoë") == "Grüße, Zoë"


@pytest.mark.parametrize(
    "to",
    ["ada@example.com\r\nBcc: victim@example.com", "ada@example.com, victim@example.com", "ada\x00@example.com", ""],
)
async def test_a_message_that_cannot_be_built_is_unsendable_and_never_tried(own_smtp: SmtpServer, to: str) -> None:
    settings = msgspec.structs.replace(smtp_settings(own_smtp.port), smtp_breaker_failures=1)
    email = OutgoingEmail(to=to, subject="unsendable", text="hello")
    with pytest.raises(MailUnsendable) as raised:
        await deliver(email, settings)
    assert isinstance(raised.value, MailRefused)  # permanent: every caller that drops refusals drops it
    await deliver_or_drop(email, settings)  # logged once, no exception: Dramatiq does not retry it
    with pytest.raises(MailUnsendable):
        await deliver(email, file_settings())  # no file either
    await deliver(OutgoingEmail(to=unique_address(), subject="after", text="x"), settings)  # breaker still closed
    assert own_smtp.wait_for(lambda m: m.message["Subject"] == "after")
    assert all(m.message["Subject"] != "unsendable" for m in own_smtp.messages)


# --- the actor ----------------------------------------------------------------------------


def test_the_send_actor_retries_with_exponential_backoff() -> None:
    assert broker.get_actor("mail.send") is send_email
    assert send_email.options["max_retries"] == 5
    assert send_email.options["min_backoff"] == 1_000
    assert send_email.options["max_backoff"] == 60_000


def test_an_enqueued_email_is_delivered_by_a_worker(request: pytest.FixtureRequest) -> None:
    """enqueue_email -> the run's broker -> a worker -> deliver: to the run's SMTP server if set, else a file."""
    settings = get_settings()
    to = unique_address()
    link = verification_link(settings.base_url, TOKEN)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        enqueue_email(verification_email(to, "ada", link))
        if settings.smtp_host:
            text = run_smtp_server(request).wait_for(lambda m: to in m.rcpt_tos, timeout=10).text
        else:
            text = plain_text(read_eml(wait_for_file(settings.var_path / "mail", to, timeout=10)))
    finally:
        worker.stop()
    assert link in text


def run_smtp_server(request: pytest.FixtureRequest) -> SmtpServer:
    """The conftest's `smtp` fixture: the server SMTP_HOST points this run at."""
    server = request.getfixturevalue("smtp")
    assert isinstance(server, SmtpServer)
    return server


def wait_for_file(folder: Path, to: str, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in folder.glob("*.eml") if folder.exists() else []:
            if read_eml(path)["To"] == to:
                return path
        time.sleep(0.05)
    raise AssertionError(f"no mail to {to} under {folder} within {timeout} s")
