"""`litestar users`: create, promote and deactivate accounts; list and revoke their personal access tokens."""

from __future__ import annotations

from uuid import UUID

import click

from app.domain.accounts.access_tokens import AccessTokens
from app.domain.accounts.schemas import Registration, UserFlags
from app.domain.accounts.services import AccountService
from app.web.cli.output import console_for_output, table
from app.web.cli.running import run_account_change


@click.group(name="users", help="Manage user accounts.")
def users() -> None:
    """Manage user accounts."""


@users.command(name="create", help="Create an active user whose email address counts as verified.")
@click.option("--email", required=True, help="The user's email address; they sign in with it or the username.")
@click.option("--username", required=True, help="The user's unique name, shown in the pages and to other operators.")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="The user's password (at least 10 characters); asked for twice, hidden, when not given.",
)
@click.option("--full-name", default=None, help="The name shown in the pages (optional).")
@click.option("--superuser", is_flag=True, default=False, help="Make the user an administrator.")
def create(email: str, username: str, password: str, full_name: str | None, superuser: bool) -> None:
    registration = Registration(email=email, username=username, password=password, full_name=full_name)

    async def work(service: AccountService) -> str:
        user = await service.register(registration, is_superuser=superuser, is_verified=True)
        return f"Created {'superuser' if superuser else 'user'} {user.username} ({user.email}), id {user.id}."

    click.echo(run_account_change(work))


def _set_flags(login: str, flags: UserFlags, done: str) -> None:
    async def work(service: AccountService) -> str:
        user = await service.by_login(login)
        if user is None:
            raise click.ClickException(f"No user with username or email {login!r}.")
        await service.set_flags(user, flags)
        return f"{user.username}: {done}."

    click.echo(run_account_change(work))


@users.command(name="promote", help="Make user LOGIN (a username or an email address) an administrator.")
@click.argument("login")
def promote(login: str) -> None:
    _set_flags(login, UserFlags(is_superuser=True), "now a superuser")


@users.command(
    name="deactivate",
    help="Deactivate user LOGIN (a username or an email address): every session and token stops at once.",
)
@click.argument("login")
def deactivate(login: str) -> None:
    _set_flags(login, UserFlags(is_active=False), "deactivated")


@users.command(
    name="tokens",
    help="List the personal access tokens of user LOGIN (a username or an email address) that still work.",
)
@click.argument("login")
def tokens(login: str) -> None:
    console = console_for_output()

    async def work(service: AccountService) -> list[list[str]]:
        user = await service.by_login(login)
        if user is None:
            raise click.ClickException(f"No user with username or email {login!r}.")
        rows = await AccessTokens(service.session).active(user)
        return [
            [
                str(token.id),
                token.name,
                token.scopes.replace(" ", ","),
                token.prefix,
                token.expires_at.strftime("%Y-%m-%d %H:%M"),
                token.last_used_at.strftime("%Y-%m-%d %H:%M") if token.last_used_at else "never",
            ]
            for token in rows
        ]

    rows = run_account_change(work)
    if not rows:
        console.print(f"{login} has no personal access tokens.")
        return
    columns = ["ID", "NAME", "SCOPES", "PREFIX", "EXPIRES (UTC)", "LAST USED (UTC)"]
    console.print(table(console, columns, rows))


@users.command(
    name="revoke-tokens",
    help=(
        "End the personal access tokens of user LOGIN (a username or an email address) at once, and the event "
        "streams opened with them: TOKEN_ID only, or every one of them without it."
    ),
)
@click.argument("login")
@click.argument("token_id", type=click.UUID, required=False)
def revoke_tokens(login: str, token_id: UUID | None) -> None:
    async def work(service: AccountService) -> str:
        user = await service.by_login(login)
        if user is None:
            raise click.ClickException(f"No user with username or email {login!r}.")
        access_tokens = AccessTokens(service.session)
        if token_id is not None:
            await access_tokens.revoke(user, token_id)
            return f"{user.username}: token {token_id} revoked."
        count = await access_tokens.revoke_all(user)
        return f"{user.username}: {count} {'token' if count == 1 else 'tokens'} revoked."

    click.echo(run_account_change(work))
