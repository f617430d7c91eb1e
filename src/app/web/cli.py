"""Operator commands on the `litestar` CLI: `litestar users create|promote|deactivate`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from litestar.plugins import CLIPluginProtocol

from app.config import get_settings
from app.domain.accounts.errors import AccountError
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.schemas import Registration, UserFlags
from app.domain.accounts.services import AccountService
from app.domain.database import create_engine, session_factory

T = TypeVar("T")


def _run(work: Callable[[AccountService], Awaitable[T]]) -> T:
    """Run `work` in one committed transaction; an account refusal is a clear CLI error."""

    async def main() -> T:
        settings = get_settings()
        engine = create_engine(settings)
        try:
            async with session_factory(engine)() as session:
                result = await work(AccountService(session, Passwords(settings), settings))
                await session.commit()
                return result
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except AccountError as exc:
        raise click.ClickException(exc.detail) from exc


@click.group(name="users", help="Manage user accounts.")
def users() -> None:
    """Manage user accounts."""


@users.command(name="create", help="Create an active, verified user.")
@click.option("--email", required=True)
@click.option("--username", required=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--full-name", default=None)
@click.option("--superuser", is_flag=True, default=False, help="Make the user an administrator.")
def create(email: str, username: str, password: str, full_name: str | None, superuser: bool) -> None:
    registration = Registration(email=email, username=username, password=password, full_name=full_name)

    async def work(service: AccountService) -> str:
        user = await service.register(registration, is_superuser=superuser, is_verified=True)
        return f"Created {'superuser' if superuser else 'user'} {user.username} ({user.email}), id {user.id}."

    click.echo(_run(work))


def _set_flags(login: str, flags: UserFlags, done: str) -> None:
    async def work(service: AccountService) -> str:
        user = await service.by_login(login)
        if user is None:
            raise click.ClickException(f"No user with username or email {login!r}.")
        await service.set_flags(user, flags)
        return f"{user.username}: {done}."

    click.echo(_run(work))


@users.command(name="promote", help="Make a user an administrator (by username or email).")
@click.argument("login")
def promote(login: str) -> None:
    _set_flags(login, UserFlags(is_superuser=True), "now a superuser")


@users.command(name="deactivate", help="Deactivate a user: every session and token stops at once.")
@click.argument("login")
def deactivate(login: str) -> None:
    _set_flags(login, UserFlags(is_active=False), "deactivated")


class OperatorCLIPlugin(CLIPluginProtocol):
    def on_cli_init(self, cli: click.Group) -> None:
        cli.add_command(users)
