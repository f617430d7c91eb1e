"""GET /api/v1/tasks/{id}/logs: a task's output, paged by line number."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, NotFoundException, ValidationException
from litestar.params import FromPath, QueryParameter
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.accounts.models import User
from app.domain.tasks.logs import DEFAULT_PAGE, MAX_PAGE, MAX_SEQ, TaskLogPage, log_page
from app.web.http.auth import requires_user


class TaskLogsController(Controller):
    path = "/api/v1/tasks/{task_id:uuid}/logs"
    tags = ["tasks"]
    guards = [requires_user]
    security = [{"BearerToken": []}]

    @get(
        operation_id="listTaskLogs",
        summary="A task's output lines, oldest first",
        description=(
            "The lines the task wrote, numbered from 1 over all its attempts (`seq`), each with its `level`, "
            "`attempt` and time. Pass `after` (a `seq`) to get only later lines, and page on with "
            "`after=next_after` (it stays `after` when nothing is newer, so a client can poll with it). "
            "A task keeps at most 10,000 lines of at most 2,000 characters; new lines also arrive live as "
            "`task.log` events on `/api/v1/events`. 404 also for another user's task."
        ),
        raises=[NotAuthorizedException, NotFoundException, ValidationException],
    )
    async def list_logs(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        reads: NamedDependency[AsyncEngine],
        after: Annotated[
            int, QueryParameter(ge=0, le=MAX_SEQ, description="Only lines with a larger `seq` (0: from the first).")
        ] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="Lines at most.")] = DEFAULT_PAGE,
    ) -> TaskLogPage:
        # A hot read: one statement on the read engine, rows straight into Structs (app.domain.tasks.logs).
        return await log_page(reads, request.user.id, task_id, after=after, limit=limit)
