"""The rows of administrators' changes to a user (from the API, the admin page or the CLI alike)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.accounts.models import User
from app.domain.audit import schemas as audit
from app.domain.audit.recording import record
from app.domain.audit.schemas import AuditContext
from app.domain.notifications.services import Broadcast
from app.domain.tasks.models import Task


def record_flag_changes(session: AsyncSession, context: AuditContext, user: User, before: tuple[bool, bool]) -> None:
    """One row per flag that changed: `before` is (is_active, is_superuser) as they were; nothing for no change."""
    was_active, was_superuser = before
    if user.is_active != was_active:
        action = audit.USER_ACTIVATED if user.is_active else audit.USER_DEACTIVATED
        record(session, context, action, target_type=audit.USER, target_id=user.id, target_name=user.username)
    if user.is_superuser != was_superuser:
        record(
            session,
            context,
            audit.USER_ROLE_CHANGED,
            target_type=audit.USER,
            target_id=user.id,
            target_name=user.username,
            detail={"is_superuser": user.is_superuser, "was_superuser": was_superuser},
        )


def record_task_retry(session: AsyncSession, context: AuditContext, task: Task, owner: User) -> None:
    """A failed or cancelled task queued again by its owner, or by an administrator for them."""
    record(
        session,
        context,
        audit.TASK_RETRIED,
        target_type=audit.TASK,
        target_id=task.id,
        target_name=task.title,
        detail={"owner": owner.username, "owner_id": str(owner.id), "attempt": task.attempts, "kind": task.kind},
    )


def record_broadcast(session: AsyncSession, context: AuditContext, broadcast: Broadcast, recipients: int) -> None:
    """A broadcast accepted (recorded before it is handed to the workers, which write the notifications)."""
    record(
        session,
        context,
        audit.BROADCAST_SENT,
        target_type=audit.USER if broadcast.user_id is not None else audit.BROADCAST,
        target_id=broadcast.user_id if broadcast.user_id is not None else broadcast.id,
        target_name=broadcast.title,
        detail={"broadcast_id": str(broadcast.id), "recipients": recipients},
    )
