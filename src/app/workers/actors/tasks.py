"""The one actor that runs every kind of task, and the housekeeping that keeps tasks from getting lost."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import anyio
import dramatiq
import structlog
from periodiq import cron

from app.config import get_settings
from app.domain.tasks.artifacts import LocalArtifacts
from app.domain.tasks.kinds import KINDS
from app.domain.tasks.maintenance import TaskKeeper
from app.domain.tasks.runner import Outcome, TaskRunner
from app.workers.actors.mail import queue_notification_email
from app.workers.context import async_actor, current_message
from app.workers.errors import BROKER_DOWN
from app.workers.runtime import runtime

log = structlog.get_logger(__name__)

MIN_BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 30_000


class RetryAttempt(dramatiq.Retry):
    """Raised so that Dramatiq's Retries middleware re-delivers the task after a backoff (logged quietly)."""


def _retry_in(retries: int) -> timedelta:
    """An upper bound of Dramatiq's backoff for the next retry, for the sweeper's patience."""
    return timedelta(milliseconds=min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** (retries + 1)))


def artifacts() -> LocalArtifacts:
    return LocalArtifacts(get_settings().artifact_path)


@async_actor(
    actor_name="tasks.run",
    max_retries=get_settings().task_max_attempts - 1,
    min_backoff=MIN_BACKOFF_MS,
    max_backoff=MAX_BACKOFF_MS,
    retry_when=lambda retries, exc: isinstance(exc, RetryAttempt),
    # Kinds enforce their own time limits; this is only the backstop above the longest one.
    time_limit=(max(kind.time_limit_seconds for kind in KINDS.values()) + 300) * 1000,
)
async def run_task(task_id: str, attempt: int) -> None:
    """Run attempt `attempt` of a task. A Dramatiq retry of this message runs the next attempt."""
    message = current_message.get()
    retries = int(message.options.get("retries", 0)) if message is not None else 0
    settings = get_settings()
    rt = runtime()
    runner = TaskRunner(rt.sessions, rt.publisher, artifacts(), settings)
    ended = await runner.run(
        UUID(task_id),
        attempt + retries,
        last_try=retries >= settings.task_max_attempts - 1,
        retry_in=_retry_in(retries),
    )
    if ended.email_notification is not None:
        # The broker client blocks: not on the loop. If this fails, the due-email sweep sends it.
        await anyio.to_thread.run_sync(queue_notification_email, ended.email_notification)
    if ended.outcome is Outcome.RETRY:
        raise RetryAttempt(f"task {task_id} attempt {attempt + retries} failed; the next one follows a backoff")


def send_task(task_id: str, attempt: int) -> bool:
    """Hand a committed task to the broker; False when the broker is unreachable (the sweeper re-sends)."""
    try:
        run_task.send(task_id, attempt)
    except BROKER_DOWN:  # the Redis broker raises redis' own errors
        log.warning("task.send_failed", task_id=task_id, attempt=attempt)
        return False
    return True


@async_actor(actor_name="tasks.sweep", periodic=cron("* * * * *"), max_retries=0)
async def sweep_tasks() -> None:
    """Re-send tasks stuck in `queued`; hand back running tasks whose worker went silent.

    Cron runs it at each minute; the scheduled run sends one follow-up 30 s later (which
    sends none), so tasks are swept every half minute.
    """
    message = current_message.get()
    if message is not None and "scheduled_at" in message.options:
        sweep_tasks.send_with_options(delay=30_000)
    rt = runtime()
    keeper = TaskKeeper(rt.sessions, rt.publisher, artifacts(), get_settings())
    resend, handed_back = await keeper.sweep()
    for task_id, attempt in resend:
        await anyio.to_thread.run_sync(send_task, str(task_id), attempt)
    if resend or handed_back:
        log.info("tasks.sweep", resent=len(resend), handed_back=handed_back)


@async_actor(actor_name="tasks.purge", periodic=cron("@hourly"), max_retries=0)
async def purge_tasks() -> None:
    """Delete finished tasks and their artifacts past TASK_RETENTION_DAYS."""
    rt = runtime()
    deleted = await TaskKeeper(rt.sessions, rt.publisher, artifacts(), get_settings()).purge()
    log.info("tasks.purge", deleted=deleted)
