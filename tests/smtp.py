"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 and a free port, keeping what it receives.

    with SmtpServer() as smtp:
        ...  # send to smtp.host:smtp.port
        received = smtp.wait_for(lambda m: m.message["To"] == "ada@example.com")
        received.text  # the plain-text body, decoded

`refuse` names recipients the server answers with 550 (a permanent refusal).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from types import TracebackType

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.servers import free_port


@dataclass(frozen=True)
class Received:
    """One message as the server got it: the SMTP envelope and the parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        body = self.message.get_body(preferencelist=("plain",))
        return "" if body is None else str(body.get_content())

    @property
    def html(self) -> str | None:
        body = self.message.get_body(preferencelist=("html",))
        return None if body is None else str(body.get_content())


class _Inbox:
    """The aiosmtpd handler: refuses the recipients it was told to, keeps every message it accepts."""

    def __init__(self, refuse: Iterable[str]) -> None:
        self.refuse = {address.lower() for address in refuse}
        self.messages: list[Received] = []
        self.changed = threading.Condition()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self.refuse:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        message = BytesParser(policy=policy.default).parsebytes(content)
        assert isinstance(message, EmailMessage)
        received = Received(mail_from=str(envelope.mail_from), rcpt_tos=list(envelope.rcpt_tos), message=message)
        with self.changed:
            self.messages.append(received)
            self.changed.notify_all()
        return "250 Message accepted for delivery"


class SmtpServer:
    """A context manager running an aiosmtpd server in its own thread for the duration of the block."""

    def __init__(self, *, refuse: Iterable[str] = ()) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self._inbox = _Inbox(refuse)
        self._controller = Controller(self._inbox, hostname=self.host, port=self.port, server_hostname="localhost")

    def __enter__(self) -> SmtpServer:
        self._controller.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._controller.stop()

    @property
    def messages(self) -> list[Received]:
        """A snapshot of what arrived so far, oldest first."""
        with self._inbox.changed:
            return list(self._inbox.messages)

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 5.0) -> Received:
        """The first received message matching `predicate`, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._inbox.changed:
            while True:
                for received in self._inbox.messages:
                    if predicate(received):
                        return received
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [r.message["Subject"] for r in self._inbox.messages]
                    raise TimeoutError(f"no matching message within {timeout} s; received subjects: {seen}")
                self._inbox.changed.wait(remaining)
