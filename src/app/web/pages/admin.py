"""/admin for superusers: users (search, activate, promote), the queue and its workers, failed tasks, broadcasts."""

from __future__ import annotations

import time
from typing import Annotated, Any
from uuid import UUID

import dramatiq
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, QueryParameter
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts.models import User
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.schemas import UserFlags
from app.domain.accounts.services import AccountService
from app.domain.audit.admin import record_broadcast, record_flag_changes, record_task_retry
from app.domain.errors import Conflict, InvalidInput, LimitReached, NotFound
from app.domain.notifications.events import EventPublisher
from app.domain.notifications.services import BroadcastRequest, count_recipients, new_broadcast
from app.domain.tasks.artifacts import ArtifactStore
from app.domain.tasks.models import FAILED
from app.domain.tasks.schemas import task_out
from app.domain.tasks.services import TaskService, task_message_args
from app.domain.tasks.stats import count_by_status, list_tasks, load_by_user, task_owner
from app.web.http.audit import audit_context
from app.web.http.blocking import in_thread, threads
from app.web.http.metrics import queue_depth
from app.web.pages.rendering import field_errors, form_data, fragment, go, is_htmx, page, requires_admin, say
from app.workers.actors.notifications import send_broadcast
from app.workers.actors.tasks import send_task_from_loop
from app.workers.heartbeat import HeartbeatStore

USERS_SHOWN = 50
FAILED_SHOWN = 50


async def _workers(heartbeats: HeartbeatStore) -> list[dict[str, Any]]:
    now = time.time()
    alive = await in_thread(heartbeats.alive)
    return [
        {
            "host": w.hostname,
            "pid": w.pid,
            "threads": w.threads,
            "queues": ", ".join(w.queues) or "every queue",
            "seen": max(0, round(now - w.seen_at)),
        }
        for w in sorted(alive, key=lambda w: (w.hostname, w.pid))
    ]


async def _queues(broker: dramatiq.Broker) -> dict[str, int] | None:
    try:
        return await queue_depth(broker)
    except Exception:  # noqa: BLE001 - a broker that is down: the page says so instead of failing
        return None


async def _status(db_session: AsyncSession, broker: dramatiq.Broker, heartbeats: HeartbeatStore) -> dict[str, Any]:
    return {
        "queues": await _queues(broker),
        "workers": await _workers(heartbeats),
        "by_status": await count_by_status(db_session),
        "load": await load_by_user(db_session, USERS_SHOWN),
    }


async def _overview(
    db_session: AsyncSession,
    accounts: AccountService,
    broker: dramatiq.Broker,
    heartbeats: HeartbeatStore,
    q: str | None = None,
) -> dict[str, Any]:
    users, total = await accounts.list_users(text=q, limit=USERS_SHOWN)
    failed = await list_tasks(db_session, status=FAILED, limit=FAILED_SHOWN)
    return {
        "q": q or "",
        "users": users,
        "users_total": total,
        **await _status(db_session, broker, heartbeats),
        "failed": [{"task": task_out(row.task), "username": row.username} for row in failed],
        "broadcast": {"form": {}, "errors": {}},
    }


class AdminPages(Controller):
    path = "/admin"
    include_in_schema = False
    guards = [requires_admin]

    @get()
    async def admin(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        settings: NamedDependency[Settings],
        broker: NamedDependency[dramatiq.Broker],
        heartbeats: NamedDependency[HeartbeatStore],
        q: Annotated[str | None, QueryParameter(required=False)] = None,
    ) -> Template:
        context = await _overview(db_session, AccountService(db_session, passwords, settings), broker, heartbeats, q)
        if is_htmx(request) and request.headers.get("hx-target") == "user-list":
            return fragment("partials/admin_users.html", {**context, "me": request.user})
        return await page(request, db_session, "admin.html", context)

    @get("/status")
    async def status(
        self,
        db_session: NamedDependency[AsyncSession],
        broker: NamedDependency[dramatiq.Broker],
        heartbeats: NamedDependency[HeartbeatStore],
    ) -> Template:
        """The queue and workers part of the page, which refreshes itself."""
        return fragment("partials/admin_status.html", await _status(db_session, broker, heartbeats))

    @post("/users/{user_id:uuid}")
    async def set_flags(
        self,
        request: Request[User, Any, Any],
        user_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        form = await form_data(request)
        flags = msgspec.convert({f: form[f] == "true" for f in ("is_active", "is_superuser") if f in form}, UserFlags)
        service = AccountService(db_session, passwords, settings)
        target = await service.require(user_id)
        before = (target.is_active, target.is_superuser)
        try:
            user = await service.set_flags(target, flags, by=request.user)
        except Conflict as exc:
            say(request, exc.detail, "error")
            return go(request, "/admin")
        record_flag_changes(db_session, audit_context(request), user, before)
        await db_session.commit()  # a deactivated user's sessions and streams end now, on every process
        if is_htmx(request):
            return fragment("partials/admin_user.html", {"u": user, "me": request.user})
        return go(request, "/admin", f"Updated {user.username}.")

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
        owner = await task_owner(db_session, task_id)
        if owner is None:
            raise NotFoundException(detail="No such task.")
        service = TaskService(db_session, settings)
        try:
            task, old_artifact = await service.retry(owner, task_id)
        except (Conflict, NotFound, LimitReached) as exc:  # the owner's MAX_ACTIVE_TASKS holds for admins too
            say(request, exc.detail, "error")
            return go(request, "/admin")
        record_task_retry(db_session, audit_context(request), task, owner)
        title, message_args = task.title, task_message_args(task)
        await db_session.commit()
        await service.events.publish(publisher)
        if old_artifact:
            await artifacts.delete(old_artifact)
        await send_task_from_loop(*message_args, executor=threads)
        if is_htmx(request):
            return Response(content="", media_type="text/html", status_code=200)  # the failed task's row goes away
        return go(request, "/admin", f"Trying “{title}” again.")

    @post("/broadcast")
    async def broadcast(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        settings: NamedDependency[Settings],
        broker: NamedDependency[dramatiq.Broker],
        heartbeats: NamedDependency[HeartbeatStore],
    ) -> Response[Any]:
        form = await form_data(request)
        try:
            item = new_broadcast(BroadcastRequest(title=form.get("title", ""), message=form.get("message", "")))
        except InvalidInput as exc:
            errors, _ = field_errors(exc)
            context = {"broadcast": {"form": form, "errors": errors}}
            if is_htmx(request):
                return fragment("partials/broadcast_form.html", context)
            overview = await _overview(db_session, AccountService(db_session, passwords, settings), broker, heartbeats)
            return await page(request, db_session, "admin.html", {**overview, **context}, 422)
        recipients = await count_recipients(db_session, None)
        record_broadcast(db_session, audit_context(request), item, recipients)
        await db_session.commit()  # recorded before it is handed on
        await in_thread(send_broadcast, item)  # the broker client blocks
        message = f"Broadcast sent to {recipients} user{'' if recipients == 1 else 's'}."
        if is_htmx(request):
            return fragment("partials/broadcast_form.html", {"broadcast": {"form": {}, "errors": {}, "saved": message}})
        return go(request, "/admin", message)
