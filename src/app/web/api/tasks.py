"""Tasks API: /api/v1/task-kinds and /api/v1/tasks."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.channels import ChannelsPlugin
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, NotFoundException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import File
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.accounts.models import User
from app.domain.audit.admin import record_task_retry
from app.domain.driver import writing
from app.domain.notifications.events import EventPublisher
from app.domain.pagination import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET, CursorPage
from app.domain.tasks.artifacts import ArtifactStore
from app.domain.tasks.listing import TaskQuery, list_tasks
from app.domain.tasks.reads import get_one
from app.domain.tasks.schemas import KindOut, TaskOut, TaskRequest, task_out
from app.domain.tasks.services import TaskService, describe_kinds, task_message_args
from app.web.api.openapi import ResultDownload
from app.web.api.task_waits import requested_wait, wait_for_end
from app.web.http.audit import audit_context
from app.web.http.auth import requires_user
from app.web.http.blocking import in_thread, threads
from app.web.http.downloads import task_result
from app.web.http.draining import Draining
from app.web.http.errors import BreaksARule, Conflicting, TooMany
from app.web.http.task_filters import TASK_QUERY
from app.workers.actors.tasks import send_new_task_from_loop, send_task_from_loop
from app.workers.actors.webhooks import queue_delivery

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
#: RFC 7240: `wait=N` holds the answer until the task ends, at most N (and at most 60) seconds.
PreferHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Prefer",
        required=False,
        max_length=200,
        description="`wait=N`: answer once the task ends, or after N seconds (at most 60); e.g. `wait=30`.",
    ),
]
ERRORS = [NotAuthorizedException, NotFoundException]


class TaskKindsController(Controller):
    path = "/api/v1/task-kinds"
    tags = ["tasks"]
    guards = [requires_user]
    security = BEARER

    @get(
        operation_id="listTaskKinds",
        summary="The kinds of task that can be started",
        description="Each kind with its title, what it does and the JSON Schema of its `params` (with defaults).",
        raises=[NotAuthorizedException],
    )
    async def kinds(self) -> list[KindOut]:
        return [msgspec.convert(kind, KindOut) for kind in describe_kinds()]


class TasksController(Controller):
    path = "/api/v1/tasks"
    tags = ["tasks"]
    guards = [requires_user]
    security = BEARER

    @post(
        operation_id="createTask",
        summary="Start a task",
        description=(
            "202 with the queued task and its `Location`. With an `Idempotency-Key` header, the same key and body "
            "within 24 hours return the original task (200); the same key with another body is a 409. 429 when the "
            "user already has MAX_ACTIVE_TASKS unfinished tasks. With `Prefer: wait=N` (at most 60), the answer "
            "waits up to N seconds for the task to end and shows it as it is then (`Preference-Applied: wait=N`)."
        ),
        status_code=HTTP_202_ACCEPTED,
        response_description="The task, queued.",
        response_headers=[
            ResponseHeader(
                name="Location",
                value="/api/v1/tasks/01936b2f-1a2b-7c3d-8e4f-5a6b7c8d9e0f",
                description="The task's address.",
                documentation_only=True,
            )
        ],
        responses={
            HTTP_200_OK: ResponseSpec(
                TaskOut,
                description="The same `Idempotency-Key` and body within 24 hours: the original task, not new.",
            )
        },
        raises=[NotAuthorizedException, ValidationException, Conflicting, BreaksARule, TooMany],
    )
    async def create(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[TaskRequest],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        publisher: NamedDependency[EventPublisher],
        settings: NamedDependency[Settings],
        channels: NamedDependency[ChannelsPlugin],
        reads: NamedDependency[AsyncEngine],
        draining: NamedDependency[Draining],
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", required=False)] = None,
        prefer: PreferHeader = None,
    ) -> Response[TaskOut]:
        # The hot path of submissions: on Postgres a driver transaction (app.domain.driver), no session.
        async with writing(sessions) as transaction:
            service = TaskService(transaction, settings)
            body, created = await service.create(request.user, data, idempotency_key)
        # Committed: the task exists before its message does.
        if created:
            # The message first, so the worker can start on the task while this process wakes the
            # task's live streams.
            await send_new_task_from_loop(body, threads)
            await service.events.publish(publisher)
        headers = {"Location": f"/api/v1/tasks/{body.id}"}
        if seconds := requested_wait(prefer):
            user_id, task_id = request.user.id, body.id
            body, applied = await wait_for_end(
                channels, draining, user_id, seconds, lambda: get_one(reads, user_id, task_id), body
            )
            if applied:
                headers["Preference-Applied"] = f"wait={seconds}"
        return Response(body, status_code=HTTP_202_ACCEPTED if created else HTTP_200_OK, headers=headers)

    @get(
        operation_id="listTasks",
        summary="The user's tasks: filtered, sorted, paginated",
        description=(
            "A page of the caller's own tasks, newest first unless `sort` says otherwise. Filters (each optional, "
            "all together): `status` and `kind` (repeat for any of several), `q` (text in the title or description, "
            "any case, matched literally), `created_after` (inclusive) and `created_before` (exclusive). Page on "
            "with `cursor=<next_cursor>` (null on the last page) and the same filters and sort: tasks created or "
            "deleted meanwhile never make a task show twice or be skipped; `offset` still works, but not with a "
            "cursor. `total` counts every task the filters match. A bad filter, sort or cursor is a 400."
        ),
        dependencies={"task_query": TASK_QUERY},
        raises=[NotAuthorizedException, ValidationException],
    )
    async def list_tasks(
        self,
        request: Request[User, Any, Any],
        reads: NamedDependency[AsyncEngine],
        task_query: NamedDependency[TaskQuery],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> CursorPage[TaskOut]:
        # The hot read: one statement on the read engine, rows straight into Structs (app.domain.tasks.listing).
        listing = await list_tasks(reads, request.user.id, task_query, limit=limit, offset=offset)
        return listing.page

    @get(
        "/{task_id:uuid}",
        operation_id="getTask",
        summary="One task",
        description=(
            "The task with its progress, result or error; 404 also for another user's task. With `Prefer: wait=N` "
            "(at most 60), the answer waits up to N seconds for the task to end (`Preference-Applied: wait=N`)."
        ),
        raises=ERRORS,
    )
    async def get_task(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        reads: NamedDependency[AsyncEngine],
        channels: NamedDependency[ChannelsPlugin],
        draining: NamedDependency[Draining],
        prefer: PreferHeader = None,
    ) -> Response[TaskOut]:
        user_id = request.user.id
        task = await get_one(reads, user_id, task_id)
        headers: dict[str, str] = {}
        if seconds := requested_wait(prefer):
            task, applied = await wait_for_end(
                channels, draining, user_id, seconds, lambda: get_one(reads, user_id, task_id), task
            )
            if applied:
                headers["Preference-Applied"] = f"wait={seconds}"
        return Response(task, headers=headers)

    @post(
        "/{task_id:uuid}/cancel",
        operation_id="cancelTask",
        summary="Cancel a task (queued: at once; running: at its next step)",
        description="A queued task is cancelled at once; a running one stops at its next step. 409 once it ended.",
        status_code=HTTP_202_ACCEPTED,
        raises=[*ERRORS, Conflicting],
    )
    async def cancel(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        publisher: NamedDependency[EventPublisher],
        settings: NamedDependency[Settings],
    ) -> TaskOut:
        service = TaskService(db_session, settings)
        body = task_out(await service.cancel(request.user, task_id))
        await db_session.commit()
        await service.events.publish(publisher)
        if service.webhook_delivery is not None:
            await in_thread(queue_delivery, service.webhook_delivery)
        return body

    @post(
        "/{task_id:uuid}/retry",
        operation_id="retryTask",
        summary="Queue a failed or cancelled task again",
        description="The task is queued again with `attempts` + 1 (its old file is deleted); 409 unless it failed "
        "or was cancelled.",
        status_code=HTTP_202_ACCEPTED,
        raises=[*ERRORS, Conflicting],
    )
    async def retry(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        publisher: NamedDependency[EventPublisher],
        artifacts: NamedDependency[ArtifactStore],
        settings: NamedDependency[Settings],
    ) -> TaskOut:
        service = TaskService(db_session, settings)
        task, old_artifact = await service.retry(request.user, task_id)
        record_task_retry(db_session, audit_context(request), task, request.user)
        body = task_out(task)
        await db_session.commit()
        await service.events.publish(publisher)
        if old_artifact:
            await artifacts.delete(old_artifact)
        await send_task_from_loop(*task_message_args(task), executor=threads)
        return body

    @delete(
        "/{task_id:uuid}",
        operation_id="deleteTask",
        summary="Delete a finished task and its artifact",
        description="Deletes the task and its file; 409 while it is queued or running (cancel it first).",
        status_code=HTTP_204_NO_CONTENT,
        raises=[*ERRORS, Conflicting],
    )
    async def delete_task(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        artifacts: NamedDependency[ArtifactStore],
        settings: NamedDependency[Settings],
    ) -> None:
        artifact = await TaskService(db_session, settings).delete(request.user, task_id)
        await db_session.commit()
        if artifact:
            await artifacts.delete(artifact)

    @get(
        "/{task_id:uuid}/result",
        operation_id="getTaskResult",
        summary="The task's file as a download, or its result JSON",
        description="An export's file as an attachment (CSV or JSON); a task without a file answers its result "
        "JSON; 404 while there is neither.",
        operation_class=ResultDownload,
        raises=ERRORS,
    )
    async def result(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        artifacts: NamedDependency[ArtifactStore],
        settings: NamedDependency[Settings],
    ) -> File | Response[dict[str, Any]]:
        return task_result(await TaskService(db_session, settings).get(request.user, task_id), artifacts)
