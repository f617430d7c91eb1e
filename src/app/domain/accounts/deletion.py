"""Leaving: a copy of everything the account holds, then the account deleted with all of it.

The export is one JSON document: the user, their tasks, notifications, sign-ins, personal
access tokens, linked identities and schedules, as the API shows each (never a hash or a secret).

Deleting removes the user's schedules (with their runs), tasks (running ones too: their worker's next write finds the
task gone and stops without writing anything, app.domain.tasks.runner), their task lines,
notifications, events, tokens, sign-ins, identities and the user's row, in one transaction;
the door then removes their files (ArtifactStore.delete_owner). The commit announces the
user (app.domain.accounts.revocation), so every session, token and event stream of theirs
ends at once on every process: a user that no longer exists is nobody's credential.

The last active superuser cannot be deleted (Conflict): someone must be left to administer
the service. Superusers are counted under a lock on their rows (on SQLite, the write lock),
so two administrators deleting themselves at once cannot both pass.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
from sqlalchemy import delete, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts.access_tokens import AccessTokenOut, AccessTokens, token_out
from app.domain.accounts.errors import UserNotFound
from app.domain.accounts.identities import IdentityOut, identity_out
from app.domain.accounts.models import EmailToken, ExternalIdentity, PersonalAccessToken, RefreshToken, SignIn, User
from app.domain.accounts.revocation import users_changed
from app.domain.accounts.schemas import UserOut, user_out
from app.domain.accounts.sign_ins import SessionOut, SignIns, session_out
from app.domain.clock import utcnow
from app.domain.errors import Conflict
from app.domain.notifications.models import Event, Notification
from app.domain.notifications.schemas import NotificationOut, notification_out
from app.domain.schedules.models import Schedule
from app.domain.schedules.schemas import ScheduleOut
from app.domain.schedules.services import schedule_out
from app.domain.tasks.models import Task
from app.domain.tasks.schemas import TaskOut, task_out

#: SQLite: a write that changes nothing, which takes the database's write lock until commit.
_SQLITE_WRITE_LOCK = text("UPDATE user_account SET id = id WHERE 1 = 0")
#: What goes with a user, children first (a task's lines go with it: ON DELETE CASCADE).
_OWNED = (Schedule, Task, Notification, Event, EmailToken, RefreshToken, PersonalAccessToken, SignIn, ExternalIdentity)


class AccountExport(msgspec.Struct, frozen=True, kw_only=True):
    """Everything an account holds, as the API shows it."""

    exported_at: datetime
    user: UserOut
    tasks: list[TaskOut]
    notifications: list[NotificationOut]
    sessions: list[SessionOut]
    access_tokens: list[AccessTokenOut]
    identities: list[IdentityOut]
    schedules: list[ScheduleOut]


async def export_account(session: AsyncSession, settings: Settings, user: User) -> AccountExport:
    """The user's data, oldest first within each list."""
    tasks = await session.scalars(select(Task).where(Task.user_id == user.id).order_by(Task.created_at, Task.id))
    notifications = await session.scalars(
        select(Notification).where(Notification.user_id == user.id).order_by(Notification.created_at, Notification.id)
    )
    identities = await session.scalars(
        select(ExternalIdentity).where(ExternalIdentity.user_id == user.id).order_by(ExternalIdentity.created_at)
    )
    schedules = await session.scalars(
        select(Schedule).where(Schedule.user_id == user.id).order_by(Schedule.created_at, Schedule.id)
    )
    sign_ins = await SignIns(session, settings).active(user.id)
    tokens = await AccessTokens(session).active(user)
    return AccountExport(
        exported_at=utcnow(),
        user=user_out(user),
        tasks=[task_out(task) for task in tasks],
        notifications=[notification_out(notification) for notification in notifications],
        sessions=[session_out(row) for row in sign_ins],
        access_tokens=[token_out(token) for token in tokens],
        identities=[identity_out(identity) for identity in identities],
        schedules=[schedule_out(row) for row in schedules],
    )


async def delete_account(session: AsyncSession, user: User) -> None:
    """Delete the user and everything they own (not their files: the door's, after commit). Flushes only."""
    if session.bind is not None and session.bind.dialect.name == "sqlite":
        await session.execute(_SQLITE_WRITE_LOCK)
    admins = (
        await session.execute(
            select(User.id, User.is_superuser, User.is_active)
            .where(or_(User.is_superuser.is_(True), User.id == user.id))
            .order_by(User.id)
            .with_for_update(key_share=True)  # FOR NO KEY UPDATE: rows referring to the user can still be written
        )
    ).all()
    mine = [row for row in admins if row.id == user.id]
    if not mine:
        raise UserNotFound("No such user.")
    others = [row for row in admins if row.id != user.id and row.is_superuser and row.is_active]
    if mine[0].is_superuser and not others:
        raise Conflict("This is the only administrator: make another user a superuser before deleting this account.")
    for model in _OWNED:
        await session.execute(delete(model).where(model.user_id == user.id))
    await session.execute(delete(User).where(User.id == user.id))
    users_changed(session, [user.id])  # announced on commit: every credential of the user ends
    if user in session:
        session.expunge(user)  # its row is gone: nothing may flush it again
