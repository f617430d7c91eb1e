"""Schedules at the edge: what the API accepts and shows."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec

RunStatus = Literal["started", "skipped"]


class ScheduleIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new schedule: the task to start (`kind`, `params`, `title` as a submission has them) and when."""

    name: str
    kind: str
    cron: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    title: str | None = None
    #: An IANA time zone name; the cron expression's times are read in it (DST included).
    timezone: str = "UTC"
    paused: bool = False


class ScheduleChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A change to a schedule: only the fields given change (`title: null` goes back to the kind's name)."""

    name: str | msgspec.UnsetType = msgspec.UNSET
    kind: str | msgspec.UnsetType = msgspec.UNSET
    params: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    title: str | msgspec.UnsetType | None = msgspec.UNSET
    cron: str | msgspec.UnsetType = msgspec.UNSET
    timezone: str | msgspec.UnsetType = msgspec.UNSET


class ScheduleOut(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    name: str
    kind: str
    params: dict[str, Any]
    title: str | None
    cron: str
    #: The expression in words, e.g. "At 02:30 every day".
    cron_description: str
    timezone: str
    paused: bool
    #: The next time it starts a task (UTC); null while paused.
    next_run_at: datetime | None
    #: The latest due time it fired for, and how: `started` (`last_task_id`) or `skipped` (`last_error` says why).
    last_run_at: datetime | None
    last_status: RunStatus | None
    last_task_id: UUID | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class ScheduleRunOut(msgspec.Struct, frozen=True, kw_only=True):
    """One due time of a schedule: the task it started, or why none was."""

    scheduled_for: datetime
    status: RunStatus
    task_id: UUID | None
    reason: str | None
    created_at: datetime
