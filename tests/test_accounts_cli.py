"""The operators' account commands: `litestar users ...` (the first test runs the real program; the
others run the same commands in this process, tests.accounts.operator_cli)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import click
import pytest
from click.testing import CliRunner
from litestar import Litestar
from litestar.testing import TestClient

from app.web.app import create_app
from app.web.cli import OperatorCLIPlugin, users
from tests.accounts import PASSWORD, litestar_cli, new_identity, operator_cli


@pytest.fixture(scope="module")
def client(migrated: None) -> Iterator[TestClient[Litestar]]:
    with TestClient(create_app()) as test_client:
        yield test_client


def log_in(client: TestClient[Litestar], username: str, password: str = PASSWORD) -> Any:
    return client.post("/api/v1/auth/login", json={"username": username, "password": password})


def me(client: TestClient[Litestar], username: str) -> dict[str, Any]:
    tokens = log_in(client, username)
    assert tokens.status_code == 200, tokens.text
    response = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {tokens.json()['access_token']}"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def said(result: Any) -> str:
    """What a command printed, as one line of words (the error box drawn around messages removed)."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", result.stdout + result.stderr).split())


def registered(client: TestClient[Litestar]) -> dict[str, str]:
    identity = new_identity()
    assert client.post("/api/v1/auth/register", json=identity).status_code == 201
    return identity


def test_create_makes_a_verified_user_who_can_sign_in(client: TestClient[Litestar]) -> None:
    identity = new_identity()
    result = litestar_cli(
        "users", "create", "--email", identity["email"].upper(), "--username", identity["username"],
        "--password", PASSWORD, "--full-name", "Op Created",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Created user {identity['username']}" in result.stdout
    user = me(client, identity["email"])
    assert (user["username"], user["email"], user["full_name"]) == (
        identity["username"],
        identity["email"],
        "Op Created",
    )
    assert (user["is_active"], user["is_verified"], user["is_superuser"]) == (True, True, False)


def test_promote_makes_a_superuser(client: TestClient[Litestar]) -> None:
    identity = registered(client)
    assert me(client, identity["username"])["is_superuser"] is False
    result = operator_cli("users", "promote", identity["email"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "now a superuser" in result.stdout
    assert me(client, identity["username"])["is_superuser"] is True


def test_deactivate_stops_sign_in_and_existing_tokens(client: TestClient[Litestar]) -> None:
    identity = registered(client)
    tokens = log_in(client, identity["username"]).json()
    result = operator_cli("users", "deactivate", identity["username"].upper())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deactivated" in result.stdout
    assert log_in(client, identity["username"]).status_code == 401
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get("/api/v1/users/me", headers=headers).status_code == 401
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401


def test_create_refuses_a_taken_username_or_a_weak_password(client: TestClient[Litestar]) -> None:
    taken = registered(client)
    fresh = new_identity()
    duplicate = operator_cli(
        "users", "create", "--email", fresh["email"], "--username", taken["username"], "--password", PASSWORD
    )
    assert duplicate.returncode != 0
    assert "username is already registered" in said(duplicate)
    weak = operator_cli(
        "users", "create", "--email", fresh["email"], "--username", fresh["username"], "--password", "x"
    )
    assert weak.returncode != 0
    assert "password: must be at least 10 characters" in said(weak)
    # Neither wrote anything: the fresh identity is still free.
    assert client.post("/api/v1/auth/register", json=fresh).status_code == 201


def test_an_unknown_user_is_an_error() -> None:
    result = operator_cli("users", "deactivate", "nobody-at-all@example.com")
    assert result.returncode != 0
    assert "No user with username or email 'nobody-at-all@example.com'" in said(result)


def undocumented(group: click.Group) -> list[str]:
    """The commands of `group` without help, their options without help text and arguments their help does not name."""
    missing = []
    for name, command in group.commands.items():
        described = command.help or ""
        if not described:
            missing.append(name)
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                missing.append(f"{name} {param.opts[0]}")
            if isinstance(param, click.Argument) and param.human_readable_name not in described:
                missing.append(f"{name} {param.human_readable_name}")
    return missing


def test_the_operator_groups_are_on_the_litestar_cli() -> None:
    cli = click.Group()
    OperatorCLIPlugin().on_cli_init(cli)
    assert {"users", "tasks"} <= set(cli.commands)


def test_every_users_command_option_and_argument_is_described() -> None:
    assert set(users.commands) == {
        "create",
        "promote",
        "deactivate",
        "tokens",
        "revoke-tokens",
        "sessions",
        "revoke-sessions",
        "export",
        "delete",
    }
    assert undocumented(users) == []
    shown = CliRunner().invoke(users, ["create", "--help"])
    assert shown.exit_code == 0, shown.output
    for option in ("--email", "--username", "--password", "--full-name", "--superuser"):
        assert option in shown.output
    assert "asked for twice, hidden" in " ".join(shown.output.split())
    promote = CliRunner().invoke(users, ["promote", "--help"])
    assert "LOGIN (a username or an email address)" in " ".join(promote.output.split())


def test_operators_list_and_revoke_a_users_personal_access_tokens(client: TestClient[Litestar]) -> None:
    identity = registered(client)
    signed_in = {"Authorization": f"Bearer {log_in(client, identity['username']).json()['access_token']}"}
    made = [
        client.post("/api/v1/users/me/tokens", json={"name": name, "scopes": ["read"]}, headers=signed_in).json()
        for name in ("backup", "report")
    ]
    assert all("token" in token for token in made), made
    listed = operator_cli("users", "tokens", identity["email"])
    assert listed.returncode == 0, listed.stdout + listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "SCOPES", "PREFIX"]
    assert sorted(line.split()[1] for line in lines[1:]) == ["backup", "report"]
    assert all(token["prefix"] in listed.stdout and token["token"] not in listed.stdout for token in made)

    def works(token: dict[str, Any]) -> int:
        return client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token['token']}"}).status_code

    assert [works(token) for token in made] == [200, 200]
    one = operator_cli("users", "revoke-tokens", identity["username"], made[0]["id"])
    assert one.returncode == 0, one.stdout + one.stderr
    assert [works(token) for token in made] == [401, 200]  # at once, in the web process too
    again = operator_cli("users", "revoke-tokens", identity["username"], made[0]["id"])
    assert again.returncode != 0
    assert "No such access token." in said(again)
    every = operator_cli("users", "revoke-tokens", identity["username"])
    assert every.stdout.strip() == f"{identity['username']}: 1 token revoked."
    assert [works(token) for token in made] == [401, 401]
    assert "has no personal access tokens" in operator_cli("users", "tokens", identity["username"]).stdout
