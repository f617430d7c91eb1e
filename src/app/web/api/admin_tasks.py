"""The admin API of tasks, for superusers: every user's tasks (GET /api/v1/admin/tasks), and who holds
the task threads with each queue's depth (GET /api/v1/admin/tasks/load).

The load reading also backs the admin page's status panel and `litestar tasks stats`; the list
follows the rules of the users' own list (app.domain.tasks.listing), narrowed by owner.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import dramatiq
import msgspec
import structlog
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, ValidationException
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.domain.pagination import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET, CursorPage
from app.domain.tasks.listing import MAX_TEXT, OwnedTaskOut, TaskQuery, list_all_tasks, owned_by
from app.domain.tasks.stats import count_by_status, load_by_user
from app.web.http.auth import requires_superuser
from app.web.http.metrics import queue_depth
from app.web.http.task_filters import TASK_QUERY

log = structlog.get_logger(__name__)

#: Users listed, busiest first.
USERS_SHOWN = 50


class UserLoadOut(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID
    username: str
    running: int
    queued: int


class TaskLoadOut(msgspec.Struct, frozen=True, kw_only=True):
    #: Messages waiting on each queue (a `tasks` message is a turn to start the fairest task, not a task);
    #: null when the broker does not answer.
    queues: dict[str, int] | None
    #: Tasks in each status, of every user.
    by_status: dict[str, int]
    #: The users with unfinished tasks, most running first (at most 50).
    users: list[UserLoadOut]
    max_running_per_user: int
    max_running_per_kind: dict[str, int]


async def queues_or_none(broker: dramatiq.Broker) -> dict[str, int] | None:
    try:
        return await queue_depth(broker)
    except Exception as exc:  # noqa: BLE001 - a broker that is down: the reading says so instead of failing
        log.warning("admin.queue_depth_failed", error=repr(exc))
        return None


async def task_load(session: AsyncSession, broker: dramatiq.Broker, settings: Settings) -> TaskLoadOut:
    users = await load_by_user(session, USERS_SHOWN)
    return TaskLoadOut(
        queues=await queues_or_none(broker),
        by_status=await count_by_status(session),
        users=[UserLoadOut(user_id=u.user_id, username=u.username, running=u.running, queued=u.queued) for u in users],
        max_running_per_user=settings.max_running_per_user,
        max_running_per_kind=settings.running_per_kind,
    )


class AdminTasksController(Controller):
    path = "/api/v1/admin/tasks"
    tags = ["admin"]
    guards = [requires_superuser]
    security = [{"BearerToken": []}]

    @get(
        operation_id="adminListTasks",
        summary="Every user's tasks: filtered, sorted, paginated (superusers only)",
        description=(
            "A page of the tasks of every user, each with its owner (`user_id`, `username`): the same filters, sort "
            "and cursor as `GET /api/v1/tasks`, and `user_id` or `username` for one owner's tasks. 403 for anyone "
            "but a superuser."
        ),
        dependencies={"task_query": TASK_QUERY},
        raises=[NotAuthorizedException, PermissionDeniedException, ValidationException],
    )
    async def list_every_task(
        self,
        reads: NamedDependency[AsyncEngine],
        task_query: NamedDependency[TaskQuery],
        user_id: Annotated[UUID | None, QueryParameter(description="Only this user's tasks.")] = None,
        username: Annotated[
            str | None,
            QueryParameter(max_length=MAX_TEXT, description="Only the tasks of the user with this username."),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> CursorPage[OwnedTaskOut]:
        query = owned_by(task_query, user_id=user_id, username=username)
        return await list_all_tasks(reads, query, limit=limit, offset=offset)

    @get(
        "/load",
        operation_id="adminTaskLoad",
        description=(
            "Each queue's depth (null while the broker does not answer), tasks by status, the busiest users (at "
            "most 50) and the running-task limits."
        ),
        summary="Running and queued tasks per user, and each queue's depth (superusers only)",
        raises=[NotAuthorizedException, PermissionDeniedException],
    )
    async def load(
        self,
        db_session: NamedDependency[AsyncSession],
        broker: NamedDependency[dramatiq.Broker],
        settings: NamedDependency[Settings],
    ) -> TaskLoadOut:
        return await task_load(db_session, broker, settings)
