"""Schedules API: /api/v1/schedules (README, "Schedules")."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts.models import User
from app.domain.pagination import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET, Page
from app.domain.schedules.schemas import ScheduleChange, ScheduleIn, ScheduleOut, ScheduleRunOut
from app.domain.schedules.services import ScheduleService, schedule_out
from app.web.http.auth import requires_user
from app.web.http.errors import BreaksARule, TooMany

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
ERRORS = [NotAuthorizedException, NotFoundException]
RULES = (
    "`cron` is a 5-field expression (minute hour day-of-month month day-of-week, e.g. `30 2 * * *`; names such as "
    "`MON-FRI` and `L` work as in Debian's cron), read in `timezone` (an IANA name, default `UTC`; DST changes as "
    "cron handles them: a skipped time runs right after the change, a repeated one once). Runs may not come "
    "closer together than SCHEDULE_MIN_INTERVAL_SECONDS. `kind`, `params` and `title` are checked as a task "
    "submission's are."
)


class SchedulesController(Controller):
    path = "/api/v1/schedules"
    tags = ["schedules"]
    guards = [requires_user]
    security = BEARER

    @get(
        operation_id="listSchedules",
        summary="My schedules",
        description="The caller's schedules, oldest first, each with its `next_run_at` (null while paused) and how "
        "its latest run went (`last_status`: `started` with `last_task_id`, or `skipped` with `last_error`).",
        raises=[NotAuthorizedException, ValidationException],
    )
    async def list_schedules(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Page[ScheduleOut]:
        return await ScheduleService(db_session, settings).page(request.user.id, limit, offset)

    @post(
        operation_id="createSchedule",
        summary="Make a schedule",
        description=(
            "201 with the schedule and its `Location`; it starts a task at every time `cron` names from now on "
            "(none while `paused`). "
            + RULES
            + " 422 for a rule broken (each field named in `errors`); 429 when the caller already has "
            "MAX_SCHEDULES_PER_USER schedules."
        ),
        status_code=HTTP_201_CREATED,
        response_headers=[
            ResponseHeader(
                name="Location",
                value="/api/v1/schedules/01936b40-1a2b-7c3d-8e4f-5a6b7c8d9e0f",
                description="The schedule's address.",
                documentation_only=True,
            )
        ],
        raises=[NotAuthorizedException, ValidationException, BreaksARule, TooMany],
    )
    async def create(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[ScheduleIn],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Response[ScheduleOut]:
        row = await ScheduleService(db_session, settings).create(request.user.id, data)
        body = schedule_out(row)
        await db_session.commit()
        return Response(body, status_code=HTTP_201_CREATED, headers={"Location": f"/api/v1/schedules/{body.id}"})

    @get(
        "/{schedule_id:uuid}",
        operation_id="getSchedule",
        summary="One schedule",
        description="The schedule with its next run and its latest run's outcome; 404 also for another user's.",
        raises=ERRORS,
    )
    async def get_schedule(
        self,
        request: Request[User, Any, Any],
        schedule_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> ScheduleOut:
        return schedule_out(await ScheduleService(db_session, settings).get(request.user.id, schedule_id))

    @patch(
        "/{schedule_id:uuid}",
        operation_id="updateSchedule",
        summary="Change a schedule",
        description=(
            "Changes the fields given and keeps the others. A new `cron` or `timezone` moves `next_run_at` to its "
            "first time after now (a paused schedule stays paused). " + RULES + " 422 for a rule broken."
        ),
        raises=[*ERRORS, ValidationException, BreaksARule],
    )
    async def update(
        self,
        request: Request[User, Any, Any],
        schedule_id: FromPath[UUID],
        data: JSONBody[ScheduleChange],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> ScheduleOut:
        body = schedule_out(await ScheduleService(db_session, settings).change(request.user.id, schedule_id, data))
        await db_session.commit()
        return body

    @delete(
        "/{schedule_id:uuid}",
        operation_id="deleteSchedule",
        summary="Delete a schedule",
        description="Deletes the schedule and its runs; the tasks it started stay.",
        status_code=HTTP_204_NO_CONTENT,
        raises=ERRORS,
    )
    async def delete_schedule(
        self,
        request: Request[User, Any, Any],
        schedule_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> None:
        await ScheduleService(db_session, settings).delete(request.user.id, schedule_id)
        await db_session.commit()

    @post(
        "/{schedule_id:uuid}/pause",
        operation_id="pauseSchedule",
        summary="Pause a schedule",
        description="It starts no task until resumed (`next_run_at` is null meanwhile). Pausing a paused schedule "
        "changes nothing.",
        status_code=200,
        raises=ERRORS,
    )
    async def pause(
        self,
        request: Request[User, Any, Any],
        schedule_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> ScheduleOut:
        body = schedule_out(await ScheduleService(db_session, settings).pause(request.user.id, schedule_id))
        await db_session.commit()
        return body

    @post(
        "/{schedule_id:uuid}/resume",
        operation_id="resumeSchedule",
        summary="Resume a paused schedule",
        description="It runs again from the first time `cron` names after now: times missed while paused are not "
        "caught up. Resuming an active schedule changes nothing.",
        status_code=200,
        raises=ERRORS,
    )
    async def resume(
        self,
        request: Request[User, Any, Any],
        schedule_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> ScheduleOut:
        body = schedule_out(await ScheduleService(db_session, settings).resume(request.user.id, schedule_id))
        await db_session.commit()
        return body

    @get(
        "/{schedule_id:uuid}/runs",
        operation_id="listScheduleRuns",
        summary="A schedule's runs",
        description=(
            "One entry per due time the schedule fired for, newest first: `started` with the `task_id` it "
            "started, or `skipped` with the `reason` (the owner was at MAX_ACTIVE_TASKS, the task's params no "
            "longer pass, the account is deactivated). Times missed while no scheduler ran are one run, for the "
            "latest of them. Kept as long as tasks are (TASK_RETENTION_DAYS)."
        ),
        raises=[*ERRORS, ValidationException],
    )
    async def runs(
        self,
        request: Request[User, Any, Any],
        schedule_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Page[ScheduleRunOut]:
        return await ScheduleService(db_session, settings).runs(request.user.id, schedule_id, limit, offset)
