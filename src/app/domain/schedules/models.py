"""A schedule (what to start and when) and its runs (one row per due time, the guard against firing twice)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import DefaultBase, UUIDv7Base
from advanced_alchemy.types import DateTimeUTC, JsonB
from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.domain.clock import utcnow

STARTED, SKIPPED = "started", "skipped"


class Schedule(UUIDv7Base):
    """A task of `kind` with `params` (checked as a submission's are), started at each time `cron` names in `timezone`.

    `next_run_at` is the next such time in UTC, null while paused; the firing pass
    (app.domain.schedules.firing) takes schedules whose time has come.
    """

    __tablename__ = "schedule"
    __table_args__ = (
        Index("ix_schedule_user_id_created_at", "user_id", "created_at"),
        # The firing pass reads due schedules in this order, every minute.
        Index("ix_schedule_next_run_at", "next_run_at"),
    )

    user_id: Mapped[UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JsonB, default=dict)
    title: Mapped[str | None] = mapped_column(String(200), default=None)
    cron: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64))
    paused: Mapped[bool] = mapped_column(default=False)
    next_run_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    #: The latest due time the schedule fired for (started a task, or skipped it), and how that went.
    last_run_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    last_status: Mapped[str | None] = mapped_column(String(16), default=None)
    last_task_id: Mapped[UUID | None] = mapped_column(ForeignKey("task.id", ondelete="SET NULL"), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)


class ScheduleRun(DefaultBase):
    """One due time of a schedule, fired: the task it started, or why it was skipped.

    Its key (schedule_id, scheduled_for) is what makes a due time fire at most once, whichever
    scheduler processes and firing passes reach it.
    """

    __tablename__ = "schedule_run"

    schedule_id: Mapped[UUID] = mapped_column(ForeignKey("schedule.id", ondelete="CASCADE"), primary_key=True)
    scheduled_for: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    task_id: Mapped[UUID | None] = mapped_column(ForeignKey("task.id", ondelete="SET NULL"), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
