"""Forgot password: the request only queues a job with the address; a worker looks it up and sends the email.

So the answer is the same work, and so about the same time, whether or not an account has
that address (it was 11-21 ms for a known one and 7 ms for an unknown one when the handler
looked the address up itself). No timing is asserted: what is checked is that the handler
runs no database statement at all, and that the email still arrives.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.accounts import PASSWORD, new_identity, token_from_mail
from tests.in_process_workers import app_with_workers
from tests.servers import LiveServer
from tests.smtp import SmtpServer


class Statements:
    """Every SQL statement any engine of this process runs, with the log context it ran in."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, Any], str]] = []

    def __call__(self, _conn: object, _cursor: object, statement: str, *_args: object) -> None:
        self.seen.append((dict(structlog.contextvars.get_contextvars()), statement))

    def of_request(self, request_id: str) -> list[str]:
        """Those run for the request itself (a job it sent carries its request id too, and its actor's name)."""
        return [sql for context, sql in self.seen if context.get("request_id") == request_id and "actor" not in context]


@pytest.fixture
def statements() -> Iterator[Statements]:
    recorder = Statements()
    event.listen(Engine, "before_cursor_execute", recorder)
    try:
        yield recorder
    finally:
        event.remove(Engine, "before_cursor_execute", recorder)


@pytest.fixture
def client(migrated: None, mode: str) -> Iterator[TestClient[Litestar]]:
    with app_with_workers(mode) as test_client:
        yield test_client


def test_the_handlers_read_nothing_and_answer_alike_for_known_and_unknown_addresses(
    client: TestClient[Litestar], statements: Statements, smtp: SmtpServer
) -> None:
    known = new_identity()
    request_id = uuid.uuid4().hex
    assert client.post("/api/v1/auth/register", json=known, headers={"x-request-id": request_id}).status_code == 201
    assert statements.of_request(request_id), "the recorder sees a request's statements"
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    answers = []
    for address in (known["email"], unknown, known["email"].upper()):
        request_id = uuid.uuid4().hex
        response = client.post(
            "/api/v1/auth/forgot-password", json={"email": address}, headers={"x-request-id": request_id}
        )
        assert statements.of_request(request_id) == [], address
        answers.append((response.status_code, response.content))
    assert answers[0][0] == 202
    assert answers == [answers[0]] * 3
    page = client.get("/forgot-password")
    csrf = page.cookies.get("csrftoken") or client.cookies.get("csrftoken")
    assert csrf
    for address in (known["email"], unknown):
        request_id = uuid.uuid4().hex
        response = client.post(
            "/forgot-password",
            data={"email": address},
            headers={"x-request-id": request_id, "x-csrftoken": csrf},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        assert statements.of_request(request_id) == [], address
    # The lookups happened in the jobs: one email for each of the three requests for the known address.
    deadline = time.monotonic() + 20
    while (
        len(resets := [m for m in smtp.messages if known["email"] in m.rcpt_tos and "/reset-password/" in m.text]) < 3
    ):
        assert time.monotonic() < deadline, resets
        time.sleep(0.05)


def test_the_reset_email_arrives_through_the_real_service(live_server: LiveServer, smtp: SmtpServer) -> None:
    identity = new_identity()
    with httpx.Client(base_url=live_server.url, timeout=20) as client:
        assert client.post("/api/v1/auth/register", json=identity).status_code == 201
        asked = client.post("/api/v1/auth/forgot-password", json={"email": identity["email"]})
        assert asked.status_code == 202, asked.text
        token = token_from_mail(smtp, identity["email"], "/reset-password")
        received = smtp.wait_for(lambda m: identity["email"] in m.rcpt_tos and "/reset-password/" in m.text)
        assert "valid for 1 hour" in received.text
        new = "a brand new passphrase"
        reset = client.post("/api/v1/auth/reset-password", json={"token": token, "password": new})
        assert reset.status_code == 204, reset.text
        old = client.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
        assert old.status_code == 401
        login = client.post("/api/v1/auth/login", json={"username": identity["username"], "password": new})
        assert login.status_code == 200, login.text
