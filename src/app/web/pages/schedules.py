"""/schedules: the user's schedules (next run shown), made, changed, paused, resumed and deleted from forms.

Every form posts plainly (a 303 with a flash, or the page again with its errors and a 4xx);
with htmx, pause, resume and delete swap the list in place, and a form with mistakes comes
back as a fragment. The rules are the domain's (app.domain.schedules.services), the API's too.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts.models import User
from app.domain.errors import DomainError, LimitReached, NotFound
from app.domain.pagination import MAX_LIMIT
from app.domain.schedules.schemas import ScheduleChange, ScheduleIn, ScheduleOut
from app.domain.schedules.services import ScheduleService, schedule_out
from app.domain.tasks.kinds import KINDS
from app.web.pages.rendering import field_errors, form_data, fragment, go, is_htmx, page, requires_signed_in

#: Runs shown on a schedule's page, newest first.
RUNS_SHOWN = 20


def _form_of(schedule: ScheduleOut) -> dict[str, str]:
    """A schedule as its edit form shows it."""
    return {
        "name": schedule.name,
        "kind": schedule.kind,
        "params": json.dumps(schedule.params),
        "title": schedule.title or "",
        "cron": schedule.cron,
        "timezone": schedule.timezone,
    }


def _read(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The posted fields as the API takes them, and the mistakes only the form can make (params that are not JSON)."""
    raw = form.get("params", "").strip()
    params: Any = {}
    errors: dict[str, str] = {}
    if raw:
        try:
            params = json.loads(raw)
        except ValueError:
            errors["params"] = 'Must be a JSON object, e.g. {"steps": 20}.'
        else:
            if not isinstance(params, dict):
                errors["params"] = 'Must be a JSON object, e.g. {"steps": 20}.'
                params = {}
    fields = {
        "name": form.get("name", ""),
        "kind": form.get("kind", ""),
        "params": params,
        "title": form.get("title", "").strip() or None,
        "cron": form.get("cron", ""),
        "timezone": form.get("timezone", "").strip() or "UTC",
    }
    return fields, errors


def _schedule_form(
    action: str, form: dict[str, str] | None = None, errors: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"action": action, "kinds": list(KINDS.values()), "form": form or {}, "errors": errors or {}, **extra}


class SchedulePages(Controller):
    path = "/schedules"
    include_in_schema = False
    guards = [requires_signed_in]

    async def _listing(self, request: Request[User, Any, Any], service: ScheduleService) -> dict[str, Any]:
        found = await service.page(request.user.id, MAX_LIMIT, 0)
        return {"schedules": found.items, "total": found.total, "limit": service.settings.max_schedules_per_user}

    @get()
    async def schedules(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Template:
        listing = await self._listing(request, ScheduleService(db_session, settings))
        return await page(request, db_session, "schedules.html", {**listing, "new": _schedule_form("/schedules")})

    @get("/list")
    async def list_fragment(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Template:
        return fragment(
            "partials/schedule_list.html", await self._listing(request, ScheduleService(db_session, settings))
        )

    @post()
    async def create(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        form = await form_data(request)
        fields, errors = _read(form)
        service = ScheduleService(db_session, settings)
        status, error = 422, None
        if not errors:
            try:
                row = await service.create(request.user.id, ScheduleIn(**fields, paused=form.get("paused") == "on"))
            except DomainError as exc:
                errors, error = field_errors(exc)
                status = 429 if isinstance(exc, LimitReached) else 422
            else:
                name = row.name
                await db_session.commit()
                return go(request, "/schedules", f"Schedule “{name}” saved.")
        new = _schedule_form("/schedules", form, errors, error=error)
        if is_htmx(request):
            return fragment("partials/schedule_form.html", {"schedule_form": new})
        await db_session.rollback()
        listing = await self._listing(request, service)
        return await page(request, db_session, "schedules.html", {**listing, "new": new}, status)

    @get("/{schedule_id:uuid}")
    async def detail(
        self,
        request: Request[User, Any, Any],
        schedule_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Template:
        service = ScheduleService(db_session, settings)
        schedule = schedule_out(await service.get(request.user.id, schedule_id))
        return await page(request, db_session, "schedule.html", await self._detail(service, request, schedule))

    async def _detail(
        self,
        service: ScheduleService,
        request: Request[User, Any, Any],
        schedule: ScheduleOut,
        form: dict[str, str] | None = None,
        errors: dict[str, str] | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        runs = await service.runs(request.user.id, schedule.id, RUNS_SHOWN, 0)
        edit = _schedule_form(f"/schedules/{schedule.id}", form or _form_of(schedule), errors, error=error)
        return {"schedule": schedule, "runs": runs.items, "runs_total": runs.total, "edit": edit}

    @post("/{schedule_id:uuid}")
    async def update(
        self,
        request: Request[User, Any, Any],
        schedule_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        form = await form_data(request)
        fields, errors = _read(form)
        service = ScheduleService(db_session, settings)
        error = None
        if not errors:
            try:
                row = await service.change(request.user.id, schedule_id, ScheduleChange(**fields))
            except NotFound:
                raise
            except DomainError as exc:
                errors, error = field_errors(exc)
            else:
                name = row.name
                await db_session.commit()
                return go(request, f"/schedules/{schedule_id}", f"Schedule “{name}” saved.")
        await db_session.rollback()
        schedule = schedule_out(await service.get(request.user.id, schedule_id))
        context = await self._detail(service, request, schedule, form, errors, error)
        if is_htmx(request):
            return fragment("partials/schedule_form.html", {"schedule_form": context["edit"]})
        return await page(request, db_session, "schedule.html", context, 422)

    async def _after(
        self, request: Request[User, Any, Any], service: ScheduleService, message: str, back: str
    ) -> Response[Any]:
        """After pause, resume or delete: the list again (htmx, from the list), or back where the form was."""
        if is_htmx(request) and back == "list":
            listing = await self._listing(request, service)
            return fragment("partials/schedule_list.html", {**listing, "saved": message})
        if back == "list":
            return go(request, "/schedules", message)
        return go(request, back, message)

    @post("/{schedule_id:uuid}/pause")
    async def pause(
        self,
        request: Request[User, Any, Any],
        schedule_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        back = (await form_data(request)).get("back", "list")
        service = ScheduleService(db_session, settings)
        name = (await service.pause(request.user.id, schedule_id)).name
        await db_session.commit()
        return await self._after(request, service, f"Schedule “{name}” paused.", _back(back, schedule_id))

    @post("/{schedule_id:uuid}/resume")
    async def resume(
        self,
        request: Request[User, Any, Any],
        schedule_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        back = (await form_data(request)).get("back", "list")
        service = ScheduleService(db_session, settings)
        name = (await service.resume(request.user.id, schedule_id)).name
        await db_session.commit()
        return await self._after(request, service, f"Schedule “{name}” resumed.", _back(back, schedule_id))

    @post("/{schedule_id:uuid}/delete")
    async def delete(
        self,
        request: Request[User, Any, Any],
        schedule_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        service = ScheduleService(db_session, settings)
        name = (await service.get(request.user.id, schedule_id)).name
        await service.delete(request.user.id, schedule_id)
        await db_session.commit()
        return await self._after(request, service, f"Schedule “{name}” deleted.", "list")


def _back(value: str, schedule_id: UUID) -> str:
    """Where a pause or resume goes back to: the list, or the schedule's own page (never elsewhere)."""
    return f"/schedules/{schedule_id}" if value == "detail" else "list"
