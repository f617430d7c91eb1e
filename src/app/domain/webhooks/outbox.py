"""Webhook deliveries kept in the database until sent (an outbox), as task emails are.

A task's end and its delivery are one transaction (`record_end`, called by the runner and by
the cancel of a queued task), so an end is never told twice nor lost. The webhooks actor
claims a delivery with a lease (`next_attempt_at` moves ahead by the longest a try may take,
so a duplicate message finds nothing), POSTs it and records the answer: 2xx `succeeded`;
otherwise `pending` again after the next of WEBHOOK_RETRY_SECONDS (with up to 20 % jitter,
so receivers coming back are not hit all at once), or `failed` when none is left. The sweeper
hands every due delivery back to the actor, so a crash between commit and send, a broker
outage or a worker killed mid-send only delays one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

import msgspec
from advanced_alchemy.mixins.uuid import uuid7  # type: ignore[attr-defined]  # the models' own id default
from sqlalchemy import Table, bindparam, insert, literal, select, update
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.clock import utcnow
from app.domain.driver import Executor, is_postgres
from app.domain.errors import NotFound
from app.domain.tasks.models import Task
from app.domain.tasks.schemas import TaskOut
from app.domain.webhooks.guard import url_problem
from app.domain.webhooks.models import TaskWebhook, WebhookDelivery, WebhookSecret
from app.domain.webhooks.schemas import (
    ALL_EVENTS,
    DeliveryOut,
    TaskWebhookDeliveries,
    WebhookIn,
    WebhookOut,
    WebhookSecretOut,
)
from app.domain.webhooks.sending import Answer
from app.domain.webhooks.signing import new_secret

PENDING, DELIVERING, SUCCEEDED, FAILED = "pending", "delivering", "succeeded", "failed"
#: A claimed try is given this long beyond WEBHOOK_TIMEOUT_SECONDS before the sweeper takes it back.
LEASE_MARGIN = timedelta(seconds=5)

_HOOKS = cast(Table, TaskWebhook.__table__)
_DELIVERIES = cast(Table, WebhookDelivery.__table__)

#: The end's delivery, when the task has a webhook for that end: one statement, nothing written otherwise.
_RECORD_END = (
    insert(_DELIVERIES)
    .from_select(
        ["id", "task_id", "attempt", "url", "event", "payload", "status", "attempts", "next_attempt_at", "created_at"],
        select(
            bindparam("id", type_=_DELIVERIES.c.id.type),
            _HOOKS.c.task_id,
            bindparam("attempt", type_=_DELIVERIES.c.attempt.type),
            _HOOKS.c.url,
            bindparam("event", type_=_DELIVERIES.c.event.type),
            bindparam("payload", type_=_DELIVERIES.c.payload.type),
            literal(PENDING, _DELIVERIES.c.status.type),
            literal(0, _DELIVERIES.c.attempts.type),
            bindparam("now", type_=_DELIVERIES.c.next_attempt_at.type),
            bindparam("created_at", type_=_DELIVERIES.c.created_at.type),
        ).where(
            _HOOKS.c.task_id == bindparam("task_id", type_=_HOOKS.c.task_id.type),
            _HOOKS.c.events.like(bindparam("pattern")),
        ),
    )
    .returning(_DELIVERIES.c.id)
)


_ATTACH = insert(_HOOKS).values(
    task_id=bindparam("task_id", type_=_HOOKS.c.task_id.type),
    url=bindparam("url", type_=_HOOKS.c.url.type),
    events=bindparam("events", type_=_HOOKS.c.events.type),
)
_SECRETS = cast(Table, WebhookSecret.__table__)
_SECRET_VALUES = {
    "user_id": bindparam("user_id", type_=_SECRETS.c.user_id.type),
    "secret": bindparam("secret", type_=_SECRETS.c.secret.type),
    "created_at": bindparam("created_at", type_=_SECRETS.c.created_at.type),
}
#: The user's secret, made unless it exists (parameters user_id, secret, created_at).
_NEW_SECRET_POSTGRES = postgres_insert(_SECRETS).values(_SECRET_VALUES).on_conflict_do_nothing()
_NEW_SECRET_SQLITE = sqlite_insert(_SECRETS).values(_SECRET_VALUES).on_conflict_do_nothing()


def webhook_problems(webhook: WebhookIn | None, settings: Settings) -> dict[str, str]:
    """A submission's `webhook` against the rules (app.domain.webhooks.guard); empty when it passes."""
    if webhook is None:
        return {}
    problems = {}
    if problem := url_problem(webhook.url, settings):
        problems["webhook.url"] = problem
    if webhook.events is not None and not webhook.events:
        problems["webhook.events"] = "must name at least one of succeeded, failed, cancelled (or be left out)"
    return problems


async def attach(session: Executor, user_id: UUID, task_id: UUID, webhook: WebhookIn) -> None:
    """Keep a new task's webhook (checked by `webhook_problems`) and make sure its owner has a secret.

    Core statements built once, so a submission runs them in a driver transaction too (app.domain.driver);
    a secret made by a concurrent first use is kept (the insert does nothing then).
    """
    events = ALL_EVENTS if webhook.events is None else tuple(e for e in ALL_EVENTS if e in webhook.events)
    await session.execute(_ATTACH, {"task_id": task_id, "url": webhook.url, "events": ",".join(events)})
    await _make_secret(session, user_id)


async def _make_secret(session: Executor, user_id: UUID) -> None:
    """A new secret for the user unless one exists (a concurrent first use keeps whichever was made first)."""
    secret = {"user_id": user_id, "secret": new_secret(), "created_at": utcnow()}
    await session.execute(_NEW_SECRET_POSTGRES if is_postgres(session) else _NEW_SECRET_SQLITE, secret)


async def record_end(session: Executor, task: TaskOut) -> UUID | None:
    """In the transaction that writes a task's end: its delivery, if its webhook wants this end; the id to send."""
    now = utcnow()
    delivery_id = uuid7()
    payload = {
        "id": str(delivery_id),
        "event": f"task.{task.status}",
        "created_at": msgspec.to_builtins(now),
        "task": msgspec.to_builtins(task),
    }
    parameters = {
        "id": delivery_id,
        "task_id": task.id,
        "attempt": task.attempts,
        "event": task.status,
        "payload": payload,
        "now": now,
        "created_at": now,
        "pattern": f"%{task.status}%",
    }
    return cast(UUID | None, (await session.execute(_RECORD_END, parameters)).scalar_one_or_none())


@dataclass(frozen=True)
class Claimed:
    """A delivery taken for one try: where, what (the exact bytes signed), with which secret, which try."""

    id: UUID
    url: str
    body: bytes
    secret: str
    attempts: int


class Deliveries:
    """The outbox's transitions; each call runs in the caller's transaction."""

    def __init__(self, session: AsyncSession, settings: Settings) -> None:
        self.session = session
        self.settings = settings

    async def claim(self, delivery_id: UUID) -> Claimed | None:
        """Take a due delivery for one try, or None when it is not due (done, or another worker holds it)."""
        now = utcnow()
        lease = timedelta(seconds=self.settings.webhook_timeout_seconds) + LEASE_MARGIN
        row = (
            await self.session.execute(
                update(_DELIVERIES)
                .where(
                    _DELIVERIES.c.id == delivery_id,
                    _DELIVERIES.c.status.in_((PENDING, DELIVERING)),
                    _DELIVERIES.c.next_attempt_at <= now,
                )
                .values(status=DELIVERING, attempts=_DELIVERIES.c.attempts + 1, next_attempt_at=now + lease)
                .returning(_DELIVERIES.c.url, _DELIVERIES.c.payload, _DELIVERIES.c.attempts, _DELIVERIES.c.task_id)
            )
        ).first()
        if row is None:
            return None
        url, payload, attempts, task_id = row
        owner = await self.session.scalar(select(Task.user_id).where(Task.id == task_id))
        secret = await _secret_row(self.session, cast(UUID, owner))
        return Claimed(delivery_id, url, msgspec.json.encode(payload), secret.secret, attempts)

    async def answered(self, claimed: Claimed, answer: Answer) -> timedelta | None:
        """Record a try's answer; how long until the next try (None: none, it succeeded or was given up)."""
        now = utcnow()
        values: dict[str, Any] = {"last_status_code": answer.status_code, "last_error": answer.error}
        retry_in: timedelta | None = None
        delays = self.settings.webhook_retry_delays
        if answer.ok:
            values |= {"status": SUCCEEDED, "next_attempt_at": None, "delivered_at": now}
        elif not answer.final and claimed.attempts <= len(delays):
            retry_in = timedelta(seconds=delays[claimed.attempts - 1] * (1 + random.random() * 0.2))
            values |= {"status": PENDING, "next_attempt_at": now + retry_in}
        else:
            values |= {"status": FAILED, "next_attempt_at": None}
        await self.session.execute(
            update(_DELIVERIES)
            .where(
                _DELIVERIES.c.id == claimed.id,
                _DELIVERIES.c.status == DELIVERING,
                _DELIVERIES.c.attempts == claimed.attempts,
            )
            .values(**values)
        )
        return retry_in

    async def due(self, limit: int = 200) -> Sequence[UUID]:
        """Deliveries whose time has come (first tries missed, retries, leases run out), oldest first."""
        result = await self.session.scalars(
            select(_DELIVERIES.c.id)
            .where(_DELIVERIES.c.status.in_((PENDING, DELIVERING)), _DELIVERIES.c.next_attempt_at <= utcnow())
            .order_by(_DELIVERIES.c.next_attempt_at)
            .limit(limit)
        )
        return result.all()


async def deliveries_of(session: AsyncSession, user_id: UUID, task_id: UUID) -> TaskWebhookDeliveries:
    """A task's webhook and deliveries, oldest first; NotFound when it is not the user's task."""
    owned = await session.scalar(select(Task.id).where(Task.id == task_id, Task.user_id == user_id))
    if owned is None:
        raise NotFound("No such task.")
    hook = await session.get(TaskWebhook, task_id)
    rows = await session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.task_id == task_id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    )
    return TaskWebhookDeliveries(
        webhook=WebhookOut(url=hook.url, events=hook.events.split(",")) if hook is not None else None,
        items=[_delivery_out(row) for row in rows],
    )


def _delivery_out(row: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=row.id,
        event=row.event,
        url=row.url,
        status=cast(Any, row.status),
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at if row.status in (PENDING, DELIVERING) else None,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
    )


async def secret_of(session: AsyncSession, user_id: UUID) -> WebhookSecretOut:
    """The user's signing secret, made at first use."""
    row = await _secret_row(session, user_id)
    return WebhookSecretOut(secret=row.secret, created_at=row.created_at)


async def rotate_secret(session: AsyncSession, user_id: UUID) -> WebhookSecretOut:
    """A new signing secret; deliveries from now on (retries included) are signed with it."""
    row = await _secret_row(session, user_id, lock=True)
    row.secret, row.created_at = new_secret(), utcnow()
    await session.flush()
    return WebhookSecretOut(secret=row.secret, created_at=row.created_at)


async def _secret_row(session: AsyncSession, user_id: UUID, *, lock: bool = False) -> WebhookSecret:
    """The user's secret row, made when missing; a concurrent first use keeps whichever was made first."""
    query = select(WebhookSecret).where(WebhookSecret.user_id == user_id)
    row = await session.scalar(query.with_for_update() if lock else query)
    if row is not None:
        return row
    await _make_secret(session, user_id)
    made: WebhookSecret = (await session.scalars(query.with_for_update() if lock else query)).one()
    return made
