"""How a command reaches the service: its own engine, domain refusals as CLI errors, and the
web processes told of what it changed (revoked credentials, task events)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar
from uuid import UUID

import click
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings, get_settings
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.revocation import announce_revoked, on_users_changed
from app.domain.accounts.services import AccountService
from app.domain.audit.schemas import AuditContext
from app.domain.database import create_engine, session_factory
from app.domain.errors import DomainError
from app.domain.notifications.events import EventPublisher
from app.web.http.credentials import touch_changed_file
from app.workers.runtime import RedisPublisher

T = TypeVar("T")


def operator_name() -> str:
    """Who runs the command, as the audit log names them: `cli:<the operating system's user>`."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no name for this uid (a container's)
        name = "unknown"
    return f"cli:{name}"


def cli_context() -> AuditContext:
    """The audit context of one command: the operator, and an id of its own that every row it records shares."""
    return AuditContext(actor_name=operator_name(), request_id=f"cli-{uuid.uuid4().hex}")


def run_in_engine(work: Callable[[async_sessionmaker[AsyncSession], Settings], Awaitable[T]]) -> T:
    """Run `work` with a session factory of its own engine; a domain refusal is a clear CLI error."""

    async def main() -> T:
        settings = get_settings()
        engine = create_engine(settings)
        try:
            return await work(session_factory(engine), settings)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except DomainError as exc:
        raise click.ClickException(exc.detail) from exc


def run_account_change(work: Callable[[AccountService], Awaitable[T]]) -> T:
    """Run `work` in one committed transaction, then end the changed users' credentials on every web process."""

    async def change(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> T:
        changed: set[UUID] = set()
        stop_hearing = on_users_changed(changed.update)
        try:
            async with sessions() as session:
                result = await work(AccountService(session, Passwords(settings), settings))
                await session.commit()
        finally:
            stop_hearing()
        await announce_revoked_users(changed, settings)
        return result

    return run_in_engine(change)


async def announce_revoked_users(user_ids: set[UUID], settings: Settings) -> None:
    """Tell every web process in services mode that these users' credentials changed.

    Embedded, the web process's channels are out of this process's reach: a file under var/
    that it watches tells it instead.
    """
    if not user_ids:
        return
    if settings.embedded_workers:
        touch_changed_file(settings)
        return
    publisher = RedisPublisher(settings.redis_url, settings.redis_namespace)
    try:
        await announce_revoked(publisher, user_ids)
    finally:
        await publisher.close()


class NoPublisher:
    """Where the CLI's events go when no live reader is in reach (embedded, or purging)."""

    async def publish(self, channel: str, data: bytes) -> None:
        return None


@contextlib.asynccontextmanager
async def live_publisher(settings: Settings) -> AsyncIterator[EventPublisher]:
    """Where the CLI tells live readers of its changes: Redis in services mode.

    Embedded, the web process's channels are in its memory, out of this process's reach: its
    streams find the events in the table at their next heartbeat.
    """
    if settings.embedded_workers:
        yield NoPublisher()
        return
    publisher = RedisPublisher(settings.redis_url, settings.redis_namespace)
    try:
        yield publisher  # RedisPublisher logs a publish that fails: it is only late
    finally:
        await publisher.close()


async def user_id_of(session: AsyncSession, settings: Settings, login: str) -> UUID:
    user = await AccountService(session, Passwords(settings), settings).by_login(login)
    if user is None:
        raise click.ClickException(f"No user with username or email {login!r}.")
    return user.id
