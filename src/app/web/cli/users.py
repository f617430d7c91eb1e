"""`litestar users`: create, promote, deactivate and delete accounts; export their data; list and revoke their
personal access tokens and sessions."""

from __future__ import annotations

import asyncio
from uuid import UUID

import click
import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings, get_settings
from app.domain.accounts.access_tokens import AccessTokens
from app.domain.accounts.deletion import delete_account, export_account
from app.domain.accounts.models import User
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.schemas import Registration, UserFlags
from app.domain.accounts.services import AccountService
from app.domain.accounts.sign_ins import SignIns
from app.domain.audit import schemas as audit
from app.domain.audit.admin import record_flag_changes
from app.domain.audit.recording import record
from app.domain.tasks.artifacts import LocalArtifacts
from app.web.cli.output import console_for_output, table
from app.web.cli.running import cli_context, run_account_change, run_in_engine


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
        record(
            service.session,
            cli_context(),
            audit.USER_CREATED,
            target_type=audit.USER,
            target_id=user.id,
            target_name=user.username,
            detail={"is_superuser": superuser},
        )
        return f"Created {'superuser' if superuser else 'user'} {user.username} ({user.email}), id {user.id}."

    click.echo(run_account_change(work))


def _set_flags(login: str, flags: UserFlags, done: str) -> None:
    async def work(service: AccountService) -> str:
        user = await service.by_login(login)
        if user is None:
            raise click.ClickException(f"No user with username or email {login!r}.")
        before = (user.is_active, user.is_superuser)
        await service.set_flags(user, flags)
        record_flag_changes(service.session, cli_context(), user, before)
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

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> list[list[str]]:
        async with sessions() as session:
            user = await AccountService(session, Passwords(settings), settings).by_login(login)
            if user is None:
                raise click.ClickException(f"No user with username or email {login!r}.")
            rows = await AccessTokens(session).active(user)
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

    rows = run_in_engine(work)
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
            record(
                service.session,
                cli_context(),
                audit.TOKEN_REVOKED,
                target_type=audit.TOKEN,
                target_id=token_id,
                detail={"owner": user.username},
            )
            return f"{user.username}: token {token_id} revoked."
        count = await access_tokens.revoke_all(user)
        if count:
            record(
                service.session,
                cli_context(),
                audit.TOKEN_REVOKED,
                target_type=audit.USER,
                target_id=user.id,
                target_name=user.username,
                detail={"owner": user.username, "count": count},
            )
        return f"{user.username}: {count} {'token' if count == 1 else 'tokens'} revoked."

    click.echo(run_account_change(work))


async def _user(service: AccountService, login: str) -> User:
    user = await service.by_login(login)
    if user is None:
        raise click.ClickException(f"No user with username or email {login!r}.")
    return user


@users.command(
    name="sessions",
    help="List where user LOGIN (a username or an email address) is signed in: browser sessions and API sign-ins.",
)
@click.argument("login")
def sessions(login: str) -> None:
    console = console_for_output()

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> list[list[str]]:
        async with sessions() as session:
            user = await _user(AccountService(session, Passwords(settings), settings), login)
            rows = await SignIns(session, settings).active(user.id)
        return [
            [
                str(row.id),
                row.kind,
                row.created_at.strftime("%Y-%m-%d %H:%M"),
                row.last_used_at.strftime("%Y-%m-%d %H:%M") if row.last_used_at else "-",
                row.ip_address or "-",
                row.user_agent or "-",
            ]
            for row in rows
        ]

    rows = run_in_engine(work)
    if not rows:
        console.print(f"{login} is not signed in anywhere.")
        return
    columns = ["ID", "KIND", "SIGNED IN (UTC)", "LAST USED (UTC)", "ADDRESS", "USER AGENT"]
    console.print(table(console, columns, rows))


@users.command(
    name="revoke-sessions",
    help=(
        "Sign user LOGIN (a username or an email address) out at once, with the event streams of those sessions: "
        "SESSION_ID only, or every session without it (personal access tokens stay: see revoke-tokens)."
    ),
)
@click.argument("login")
@click.argument("session_id", type=click.UUID, required=False)
def revoke_sessions(login: str, session_id: UUID | None) -> None:
    async def work(service: AccountService) -> str:
        user = await _user(service, login)
        sign_ins = SignIns(service.session, service.settings)
        if session_id is not None:
            kind = await sign_ins.revoke(user.id, session_id)
            record(
                service.session,
                cli_context(),
                audit.SESSION_REVOKED,
                target_type=audit.SESSION,
                target_id=session_id,
                target_name=user.username,
                detail={"kind": kind},
            )
            return f"{user.username}: session {session_id} signed out."
        count = await sign_ins.revoke_all(user.id)
        if count:
            record(
                service.session,
                cli_context(),
                audit.SESSION_REVOKED,
                target_type=audit.USER,
                target_id=user.id,
                target_name=user.username,
                detail={"count": count},
            )
        return f"{user.username}: {count} {'session' if count == 1 else 'sessions'} signed out."

    click.echo(run_account_change(work))


@users.command(
    name="export",
    help=(
        "Print everything user LOGIN (a username or an email address) holds as one JSON document (as "
        "GET /api/v1/users/me/export gives it), e.g. before `litestar users delete`."
    ),
)
@click.argument("login")
def export(login: str) -> None:
    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> bytes:
        async with sessions() as session:
            user = await _user(AccountService(session, Passwords(settings), settings), login)
            document = msgspec.json.encode(await export_account(session, settings, user))
            record(
                session,
                cli_context(),
                audit.ACCOUNT_EXPORTED,
                target_type=audit.USER,
                target_id=user.id,
                target_name=user.username,
            )
            await session.commit()
            return document

    click.echo(msgspec.json.format(run_in_engine(work), indent=2).decode())


@users.command(
    name="delete",
    help=(
        "Delete user LOGIN (a username or an email address) with every task (running ones stop), task file, "
        "notification, token and session: they are signed out everywhere at once. Asks first, unless --yes. "
        "The only active superuser cannot be deleted."
    ),
)
@click.argument("login")
@click.option("--yes", is_flag=True, default=False, help="Do not ask for confirmation (for scripts).")
def delete(login: str, yes: bool) -> None:
    if not yes:
        click.confirm(f"Delete {login} and everything the account holds? This cannot be undone", abort=True)

    async def work(service: AccountService) -> tuple[UUID, str]:
        user = await _user(service, login)
        found = user.id, user.username
        email = user.email
        await delete_account(service.session, user)
        record(
            service.session,
            cli_context(),
            audit.ACCOUNT_DELETED,
            target_type=audit.USER,
            target_id=found[0],
            target_name=found[1],
            detail={"email": email},
        )
        return found

    user_id, username = run_account_change(work)
    asyncio.run(LocalArtifacts(get_settings().artifact_path).delete_owner(user_id))
    click.echo(f"{username}: deleted, with everything the account held.")
