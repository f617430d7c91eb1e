"""Task pages: the dashboard (start a task, the user's tasks), /tasks/{id}, and their actions."""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.plugins.htmx import HTMXTemplate
from litestar.response import File, Template
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.domain.accounts.models import User
from app.domain.audit.admin import record_task_retry
from app.domain.errors import Conflict, DomainError, LimitReached
from app.domain.notifications.events import EventPublisher
from app.domain.pagination import MAX_CURSOR, MAX_OFFSET
from app.domain.tasks.artifacts import ArtifactStore
from app.domain.tasks.kinds import KINDS, Kind, get_kind
from app.domain.tasks.logs import newest_lines
from app.domain.tasks.models import Task
from app.domain.tasks.schemas import TaskRequest, task_out
from app.domain.tasks.services import TaskService, task_message_args
from app.web.http.audit import audit_context
from app.web.http.blocking import threads
from app.web.http.downloads import task_result
from app.web.pages.rendering import (
    field_errors,
    form_data,
    fragment,
    go,
    is_htmx,
    live_from,
    page,
    requires_signed_in,
    say,
)
from app.web.pages.task_forms import param_fields, read_params, read_run_at
from app.web.pages.task_list import filter_form, task_list
from app.web.pages.task_webhooks import webhook_context
from app.workers.actors.tasks import send_new_task_from_loop, send_task_from_loop

#: The task page shows this many of a task's newest output lines (and keeps as many as they come live).
LOG_LINES_SHOWN = 200
TASKS_CHANGED = "tasks-changed"


def _kind(name: str | None) -> Kind[Any]:
    return get_kind(name or "") or next(iter(KINDS.values()))


def start_form(kind_name: str | None = None, form: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """The start-a-task form's context: the kinds, the chosen one's fields, a fresh idempotency key."""
    kind = _kind(kind_name)
    return {
        "kinds": list(KINDS.values()),
        "kind": kind,
        "fields": param_fields(kind),
        "form": form or {},
        "errors": {},
        "idempotency_key": uuid.uuid4().hex,
        **extra,
    }


def _cancelling(task: Task) -> set[UUID]:
    """The ids (this one, or none) of running tasks asked to stop, which the page says are being cancelled."""
    return {task.id} if task.cancel_requested else set()


class TaskPages(Controller):
    include_in_schema = False
    guards = [requires_signed_in]

    @get("/dashboard")
    async def dashboard(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        reads: NamedDependency[AsyncEngine],
        kind: Annotated[str | None, QueryParameter(required=False)] = None,
        cursor: Annotated[str, QueryParameter(max_length=MAX_CURSOR)] = "",
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Template:
        last_event_id = await live_from(db_session, request.user.id)  # first: the tasks read next are at least this new
        listing = await task_list(reads, request.user.id, filter_form(request), cursor, offset)
        context = {"start": start_form(kind), "last_event_id": last_event_id, **listing}
        return await page(request, db_session, "dashboard.html", context, 400 if listing["filter_errors"] else 200)

    @get("/dashboard/tasks")
    async def list_fragment(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        reads: NamedDependency[AsyncEngine],
        cursor: Annotated[str, QueryParameter(max_length=MAX_CURSOR)] = "",
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Template:
        last_event_id = await live_from(db_session, request.user.id)
        listing = await task_list(reads, request.user.id, filter_form(request), cursor, offset)
        response = fragment("partials/task_list.html", {"last_event_id": last_event_id, **listing})
        # The address bar shows the list the page holds now (after a filter sent by htmx), without a history entry.
        response.headers["HX-Replace-Url"] = listing["page_url"]
        return response

    @get("/dashboard/task-params")
    async def params_fragment(self, kind: Annotated[str | None, QueryParameter(required=False)] = None) -> Template:
        return fragment("partials/task_params.html", {**start_form(kind), "swapped": True})

    @post("/tasks")
    async def start(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        reads: NamedDependency[AsyncEngine],
        publisher: NamedDependency[EventPublisher],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        form = await form_data(request)
        kind = _kind(form.get("kind"))
        params, errors = read_params(param_fields(kind), form)
        run_at, time_errors = read_run_at(form)
        errors |= time_errors
        service = TaskService(db_session, settings)
        request_body = TaskRequest(
            kind=form.get("kind", ""), params=params, title=form.get("title", "").strip() or None, run_at=run_at
        )
        status, error = 422, None
        if not errors:
            try:
                task, created = await service.create(request.user, request_body, form.get("idempotency_key") or None)
            except DomainError as exc:
                errors, error = field_errors(exc)
                errors = {name.removeprefix("params."): message.replace("`", "") for name, message in errors.items()}
                status = 429 if isinstance(exc, LimitReached) else 422
            else:
                await db_session.commit()  # the task exists before its message does
                if created:
                    await service.events.publish(publisher)
                    await send_new_task_from_loop(task, threads)
                message = f"Started “{task.title}”."
                if task.run_at is not None:
                    message = f"“{task.title}” starts at {task.run_at:%Y-%m-%d %H:%M:%S} UTC."
                if is_htmx(request):
                    return HTMXTemplate(
                        template_name="partials/start_form.html",
                        context={"start": start_form(kind.name, saved=message)},
                        trigger_event=TASKS_CHANGED,
                        after="receive",
                    )
                return go(request, "/dashboard", message)
        start = {**start_form(kind.name, form), "errors": errors, "error": error}
        if is_htmx(request):
            return fragment("partials/start_form.html", {"start": start})
        last_event_id = await live_from(db_session, request.user.id)
        listing = await task_list(reads, request.user.id)
        context = {"start": start, "last_event_id": last_event_id, **listing}
        return await page(request, db_session, "dashboard.html", context, status)

    @get("/tasks/{task_id:uuid}")
    async def detail(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        reads: NamedDependency[AsyncEngine],
    ) -> Template:
        last_event_id = await live_from(db_session, request.user.id)
        task = await TaskService(db_session, settings).get(request.user, task_id)
        context = {"task": task_out(task), "cancelling": _cancelling(task), "last_event_id": last_event_id}
        # After the task (after the newest event id): every line up to that event is shown; app.js adds the rest.
        context |= {"log_lines": await newest_lines(reads, task_id, LOG_LINES_SHOWN), "log_keep": LOG_LINES_SHOWN}
        context |= await webhook_context(db_session, request.user.id, task_id)
        return await page(request, db_session, "task.html", context)

    @get("/tasks/{task_id:uuid}/row")
    async def row(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Template:
        return await self._fragment(request, task_id, db_session, settings, "row")

    @get("/tasks/{task_id:uuid}/panel")
    async def panel(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Template:
        return await self._fragment(request, task_id, db_session, settings, "detail")

    async def _fragment(
        self,
        request: Request[User, Any, Any],
        task_id: UUID,
        db_session: AsyncSession,
        settings: Settings,
        view: str,
        error: str | None = None,
    ) -> Template:
        last_event_id = await live_from(db_session, request.user.id)  # read first: the task is at least this new
        task = await TaskService(db_session, settings).get(request.user, task_id)
        template = "partials/task_panel.html" if view == "detail" else "partials/task_row.html"
        context = {"task": task_out(task), "cancelling": _cancelling(task), "error": error}
        return fragment(template, {**context, "last_event_id": last_event_id})

    async def _after_action(
        self,
        request: Request[User, Any, Any],
        task_id: UUID,
        db_session: AsyncSession,
        settings: Settings,
        view: str,
        message: str,
    ) -> Response[Any]:
        if is_htmx(request):
            return await self._fragment(request, task_id, db_session, settings, view)
        return go(request, f"/tasks/{task_id}" if view == "detail" else "/dashboard", message)

    async def _refused(
        self,
        request: Request[User, Any, Any],
        task_id: UUID,
        db_session: AsyncSession,
        settings: Settings,
        view: str,
        exc: DomainError,
    ) -> Response[Any]:
        await db_session.rollback()
        if is_htmx(request):
            return await self._fragment(request, task_id, db_session, settings, view, exc.detail)
        say(request, exc.detail, "error")
        return go(request, f"/tasks/{task_id}" if view == "detail" else "/dashboard")

    @post("/tasks/{task_id:uuid}/cancel")
    async def cancel(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        publisher: NamedDependency[EventPublisher],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        view = (await form_data(request)).get("view", "row")
        service = TaskService(db_session, settings)
        try:
            task = await service.cancel(request.user, task_id)
        except Conflict as exc:
            return await self._refused(request, task_id, db_session, settings, view, exc)
        title = task.title
        await db_session.commit()
        await service.events.publish(publisher)
        return await self._after_action(request, task_id, db_session, settings, view, f"Cancelling “{title}”.")

    @post("/tasks/{task_id:uuid}/retry")
    async def retry(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        publisher: NamedDependency[EventPublisher],
        artifacts: NamedDependency[ArtifactStore],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        view = (await form_data(request)).get("view", "row")
        service = TaskService(db_session, settings)
        try:
            task, old_artifact = await service.retry(request.user, task_id)
        except (Conflict, LimitReached) as exc:  # a retry counts against MAX_ACTIVE_TASKS too
            return await self._refused(request, task_id, db_session, settings, view, exc)
        record_task_retry(db_session, audit_context(request), task, request.user)
        title, message_args = task.title, task_message_args(task)
        await db_session.commit()
        await service.events.publish(publisher)
        if old_artifact:
            await artifacts.delete(old_artifact)
        await send_task_from_loop(*message_args, executor=threads)
        return await self._after_action(request, task_id, db_session, settings, view, f"Trying “{title}” again.")

    @post("/tasks/{task_id:uuid}/delete")
    async def delete(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        artifacts: NamedDependency[ArtifactStore],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        view = (await form_data(request)).get("view", "row")
        service = TaskService(db_session, settings)
        title = (await service.get(request.user, task_id)).title
        try:
            artifact = await service.delete(request.user, task_id)
        except Conflict as exc:
            return await self._refused(request, task_id, db_session, settings, view, exc)
        await db_session.commit()
        if artifact:
            await artifacts.delete(artifact)
        message = f"Deleted “{title}”."
        if is_htmx(request) and view != "detail":
            return Response(content="", media_type="text/html", status_code=200)  # the row's outerHTML becomes nothing
        return go(request, "/dashboard", message)

    @get("/tasks/{task_id:uuid}/result")
    async def result(
        self,
        request: Request[User, Any, Any],
        task_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        artifacts: NamedDependency[ArtifactStore],
        settings: NamedDependency[Settings],
    ) -> File | Response[dict[str, Any]]:
        task = await TaskService(db_session, settings).get(request.user, task_id)
        return task_result(task, artifacts, json_filename=f"{task.id}.json")
