"""A task: one background job, from queued to succeeded, failed or cancelled."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import DefaultBase, UUIDv7Base
from advanced_alchemy.types import DateTimeUTC, JsonB
from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.domain.clock import utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
#: The rows of the partial index of queued tasks; why an expression of the status: app.domain.tasks.fairness._queued.
QUEUED_INDEX_WHERE = f"lower(status) = '{QUEUED}'"


class Task(UUIDv7Base):
    __tablename__ = "task"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_task_user_id_idempotency_key"),
        # Task lists walk these in keyset order (created_at, id): a user's tasks, and everyone's (the admin list).
        Index("ix_task_user_id_created_at_id", "user_id", "created_at", "id"),
        Index("ix_task_created_at_id", "created_at", "id"),
        Index("ix_task_status_enqueued_at", "status", "enqueued_at"),
        # The active-task cap counts a user's queued and running tasks on every submission.
        Index("ix_task_user_id_status", "user_id", "status"),
        # The fair claim (app.domain.tasks.fairness) walks the queued tasks only: their owners, and each
        # owner's oldest first. Partial, so it holds the queue, not the history.
        Index(
            "ix_task_queued_user_id_created_at_id",
            "user_id",
            "created_at",
            "id",
            postgresql_where=text(QUEUED_INDEX_WHERE),
            sqlite_where=text(QUEUED_INDEX_WHERE),
        ),
    )

    user_id: Mapped[UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(2000), default=None)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    params: Mapped[dict[str, Any]] = mapped_column(JsonB, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonB, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    #: Runs started or scheduled, counting automatic and manual retries; a message names the
    #: attempt it is for, so a duplicate or stale message cannot claim the task.
    attempts: Mapped[int] = mapped_column(default=1)
    #: The attempt that began the current round (1, or the attempt a retry asked for): a round has
    #: TASK_MAX_ATTEMPTS attempts.
    first_attempt: Mapped[int] = mapped_column(default=1, server_default="1")
    #: The worker process (its heartbeat id, app.workers.heartbeat) running the current attempt.
    worker_id: Mapped[str | None] = mapped_column(String(32), default=None)
    progress_current: Mapped[int] = mapped_column(default=0)
    progress_total: Mapped[int] = mapped_column(default=0)
    progress_message: Mapped[str | None] = mapped_column(String(500), default=None)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    artifact: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    #: When the current attempt's message was (or, after a backoff, will be) due on the broker.
    enqueued_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    #: When the user asked it to start (`run_at` of the submission), or None: at once. A task waiting for it is
    #: queued with `enqueued_at` at that time, so the claim (app.domain.tasks.fairness) passes it over until then.
    run_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class TaskLog(DefaultBase):
    """One line a task wrote (app.domain.tasks.logs): numbered from 1 per task across all its attempts.

    The key (task_id, seq) is the index every read walks; lines go with their task (ON DELETE CASCADE).
    """

    __tablename__ = "task_log"

    task_id: Mapped[UUID] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    attempt: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
