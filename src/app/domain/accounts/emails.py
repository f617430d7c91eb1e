"""The account emails as plain data: what to send, to whom, with which link.

Composing is a domain matter; delivering (SMTP or a file under var/mail/) is the
workers' (`app.workers.mail`). The links point at the pages that take the token, with the
token in the path (`/verify-email/<token>`): app.config.redaction keeps such paths (and
the `?token=` of links sent before) out of every log line.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

import msgspec


class OutgoingEmail(msgspec.Struct, frozen=True, kw_only=True):
    """One message to one recipient: a plain-text body and, optionally, an HTML alternative."""

    to: str
    subject: str
    text: str
    html: str | None = None


VERIFY_PATH = "/verify-email"
RESET_PATH = "/reset-password"


def verification_link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{VERIFY_PATH}/{quote(token, safe='')}"


def reset_link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{RESET_PATH}/{quote(token, safe='')}"


def duration(minutes: int) -> str:
    """60 -> "1 hour", 2880 -> "48 hours", 90 -> "90 minutes"."""
    if minutes % 60 == 0:
        hours = minutes // 60
        return "1 hour" if hours == 1 else f"{hours} hours"
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


def verification_email(user_email: str, username: str, link: str, *, valid_hours: int = 48) -> OutgoingEmail:
    """The "Confirm your email address" email, sent after registration."""
    valid = duration(valid_hours * 60)
    text = (
        f"Hello {username},\n"
        "\n"
        f"thanks for signing up. Please confirm that {user_email} is your email address by opening this link:\n"
        "\n"
        f"{link}\n"
        "\n"
        f"The link is valid for {valid} and works only once.\n"
        "\n"
        "If you did not create an account, you can ignore this email: nothing will happen.\n"
    )
    html = _html(
        greeting=f"Hello {username},",
        lead=f"thanks for signing up. Please confirm that {user_email} is your email address.",
        action="Confirm my email address",
        link=link,
        notes=[
            f"The link is valid for {valid} and works only once.",
            "If you did not create an account, you can ignore this email: nothing will happen.",
        ],
    )
    return OutgoingEmail(to=user_email, subject="Confirm your email address", text=text, html=html)


def email_change_email(new_email: str, username: str, link: str, *, valid_hours: int = 48) -> OutgoingEmail:
    """The "Confirm your new email address" email, sent to the new address of a change."""
    valid = duration(valid_hours * 60)
    text = (
        f"Hello {username},\n"
        "\n"
        f"you asked to change the email address of your account to {new_email}. To confirm it, open this link:\n"
        "\n"
        f"{link}\n"
        "\n"
        f"The link is valid for {valid} and works only once. Until you open it, your address stays as it is.\n"
        "\n"
        "If you did not ask for this, you can ignore this email: nothing will change.\n"
    )
    html = _html(
        greeting=f"Hello {username},",
        lead=f"you asked to change the email address of your account to {new_email}.",
        action="Confirm my new email address",
        link=link,
        notes=[
            f"The link is valid for {valid} and works only once. Until you open it, your address stays as it is.",
            "If you did not ask for this, you can ignore this email: nothing will change.",
        ],
    )
    return OutgoingEmail(to=new_email, subject="Confirm your new email address", text=text, html=html)


def email_change_notice(old_email: str, username: str, new_email: str) -> OutgoingEmail:
    """The notice sent to the current address when a change to another one is asked for (no link)."""
    text = (
        f"Hello {username},\n"
        "\n"
        f"someone signed in to your account asked to change its email address from {old_email} to {new_email}. "
        "The change happens only when the link sent to the new address is opened.\n"
        "\n"
        "If this was not you, sign in and change your password now (or reset it): that cancels the change "
        "and ends every other session.\n"
    )
    return OutgoingEmail(to=old_email, subject="Your email address is being changed", text=text)


def reset_email(user_email: str, username: str, link: str, *, valid_minutes: int = 60) -> OutgoingEmail:
    """The "Reset your password" email, sent when someone asks for it (forgot password)."""
    valid = duration(valid_minutes)
    text = (
        f"Hello {username},\n"
        "\n"
        f"someone asked to reset the password of the account for {user_email}. "
        "To choose a new password, open this link:\n"
        "\n"
        f"{link}\n"
        "\n"
        f"The link is valid for {valid} and can be used only once.\n"
        "\n"
        "If you did not ask for this, you can ignore this email: your password stays as it is.\n"
    )
    html = _html(
        greeting=f"Hello {username},",
        lead=f"someone asked to reset the password of the account for {user_email}.",
        action="Choose a new password",
        link=link,
        notes=[
            f"The link is valid for {valid} and can be used only once.",
            "If you did not ask for this, you can ignore this email: your password stays as it is.",
        ],
    )
    return OutgoingEmail(to=user_email, subject="Reset your password", text=text, html=html)


def _html(*, greeting: str, lead: str, action: str, link: str, notes: list[str]) -> str:
    href = escape(link, quote=True)
    paragraphs = "\n".join(f"<p>{escape(note)}</p>" for note in notes)
    return (
        "<!doctype html>\n"
        '<html><body style="font-family: sans-serif; line-height: 1.5">\n'
        f"<p>{escape(greeting)}</p>\n"
        f"<p>{escape(lead)}</p>\n"
        f'<p><a href="{href}">{escape(action)}</a></p>\n'
        f'<p>Or copy this address into your browser:<br><a href="{href}">{escape(link)}</a></p>\n'
        f"{paragraphs}\n"
        "</body></html>\n"
    )
