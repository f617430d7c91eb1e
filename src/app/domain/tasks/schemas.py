"""Tasks at the edge: what the API accepts and shows, and the live `task.updated` event's data."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec

from app.domain.tasks.models import Task
from app.domain.webhooks.schemas import WebhookIn

#: A task's status, as the API names it (`GET /api/v1/tasks?status=` accepts only these).
TaskStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class TaskRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    title: str | None = None
    description: str | None = None
    #: Where to POST when the task ends (app.domain.webhooks); none by default.
    webhook: WebhookIn | None = None
    #: Start no earlier than this (RFC 3339 with an offset); none, or a time not in the future: at once.
    run_at: datetime | None = None


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    current: int
    total: int
    percent: float
    message: str | None


class TaskOut(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    kind: str
    title: str
    description: str | None
    status: str
    progress: Progress
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: When the task was asked to start (null: at once); a queued task waits until then.
    run_at: datetime | None


class KindOut(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    title: str
    description: str
    params_schema: dict[str, Any]


def progress_of(status: str, current: int, total: int, message: str | None) -> Progress:
    """A task's progress; without a total, a succeeded task is at 100 % and any other at 0 %."""
    percent = round(100.0 * current / total, 1) if total else (100.0 if status == "succeeded" else 0.0)
    return Progress(current=current, total=total, percent=percent, message=message)


def task_out(task: Task) -> TaskOut:
    return TaskOut(
        id=task.id,
        kind=task.kind,
        title=task.title,
        description=task.description,
        status=task.status,
        progress=progress_of(task.status, task.progress_current, task.progress_total, task.progress_message),
        params=task.params,
        result=task.result,
        error=task.error,
        attempts=task.attempts,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        run_at=task.run_at,
    )
