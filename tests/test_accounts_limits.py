"""Abuse limits: repeated failed logins, password-reset requests and registrations get a 429 with Retry-After.

The run's environment sets generous limits, so these tests build the app in-process with
tight ones. The counters live in Redis in services mode (shared by every app of the run),
so each test starts by emptying them; login counters are keyed by account, and every test
uses fresh ones. Concurrency, the account and address layers and proxies: test_login_limits.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.config import get_settings
from app.web.app import create_app
from app.web.http.limits import Limiter
from tests.accounts import PASSWORD, new_identity

LOGIN_FAILURES = 3
FORGOT_PER_HOUR = 2
REGISTRATIONS_PER_HOUR = 2


def limiter_of(app: Litestar) -> Limiter:
    limiter: Limiter = app.dependencies["limiter"].dependency()
    return limiter


@pytest.fixture
def client(migrated: None) -> Iterator[TestClient[Litestar]]:
    settings = msgspec.structs.replace(
        get_settings(),
        login_failures_per_window=LOGIN_FAILURES,
        forgot_password_per_hour=FORGOT_PER_HOUR,
        registrations_per_hour=REGISTRATIONS_PER_HOUR,
    )
    app = create_app(settings)
    with TestClient(app) as test_client:
        test_client.blocking_portal.call(limiter_of(app).clear_all)
        yield test_client


def assert_too_many(response: Any, window: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 429
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    assert 0 < int(retry_after) <= window


def register(client: TestClient[Litestar]) -> dict[str, str]:
    identity = new_identity()
    response = client.post("/api/v1/auth/register", json=identity)
    assert response.status_code == 201, response.text
    return identity


def log_in(client: TestClient[Litestar], username: str, password: str) -> Any:
    return client.post("/api/v1/auth/login", json={"username": username, "password": password})


def test_failed_logins_are_limited_per_username_and_address(client: TestClient[Litestar]) -> None:
    window = get_settings().login_window_seconds
    target, bystander = register(client), register(client)
    for _ in range(LOGIN_FAILURES):
        assert log_in(client, target["username"], "wrong password!").status_code == 401
    assert_too_many(log_in(client, target["username"], "wrong password!"), window)
    # While limited, even the right password is refused, in any letter case of the username.
    assert_too_many(log_in(client, target["username"], PASSWORD), window)
    assert_too_many(log_in(client, target["username"].upper(), PASSWORD), window)
    form = client.post("/api/v1/auth/login", data={"username": target["username"], "password": PASSWORD})
    assert_too_many(form, window)
    # Another username from the same address is not limited.
    assert log_in(client, bystander["username"], "wrong password!").status_code == 401
    assert log_in(client, bystander["username"], PASSWORD).status_code == 200


def test_a_successful_login_clears_the_failures(client: TestClient[Litestar]) -> None:
    identity = register(client)
    for _ in range(LOGIN_FAILURES - 1):
        assert log_in(client, identity["username"], "wrong password!").status_code == 401
    assert log_in(client, identity["username"], PASSWORD).status_code == 200
    for _ in range(LOGIN_FAILURES):
        assert log_in(client, identity["username"], "wrong password!").status_code == 401
    assert log_in(client, identity["username"], "wrong password!").status_code == 429


def test_unknown_usernames_are_limited_too(client: TestClient[Litestar]) -> None:
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"
    for _ in range(LOGIN_FAILURES):
        assert log_in(client, nobody, PASSWORD).status_code == 401
    assert_too_many(log_in(client, nobody, PASSWORD), get_settings().login_window_seconds)


def test_forgot_password_is_limited_per_address(client: TestClient[Litestar]) -> None:
    for _ in range(FORGOT_PER_HOUR):
        email = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
        assert client.post("/api/v1/auth/forgot-password", json={"email": email}).status_code == 202
    refused = client.post("/api/v1/auth/forgot-password", json={"email": f"x{uuid.uuid4().hex[:8]}@example.com"})
    assert_too_many(refused, 3600)


def test_registration_is_limited_per_address_and_a_refused_one_writes_nothing(client: TestClient[Litestar]) -> None:
    for _ in range(REGISTRATIONS_PER_HOUR):
        register(client)
    identity = new_identity()
    assert_too_many(client.post("/api/v1/auth/register", json=identity), 3600)
    # Nothing was written: once the window is cleared, the same identity registers.
    client.blocking_portal.call(limiter_of(client.app).clear_all)
    assert client.post("/api/v1/auth/register", json=identity).status_code == 201
