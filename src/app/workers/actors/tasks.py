"""The one actor that runs every kind of task, and the housekeeping that keeps tasks from getting lost.

A `tasks.run` message means "a worker thread may start a task": the worker claims the
fairest task that may start (app.domain.tasks.fairness), whichever task the message was
sent for, runs it, and then claims the next one itself before it goes back to the queue;
it stops when none may start. So every message is a turn, never a promise to one task:
one sent per new, retried or handed-back task, and one after a retry's backoff. A message
that finds nothing to claim (a duplicate, or every waiting task's owner at a cap) does
nothing: the worker that ends one of that owner's tasks claims the next.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from datetime import timedelta

import anyio
import dramatiq
import structlog
from periodiq import cron

from app.config import get_settings
from app.domain.clock import utcnow
from app.domain.tasks.artifacts import LocalArtifacts
from app.domain.tasks.kinds import KINDS
from app.domain.tasks.maintenance import TaskKeeper
from app.domain.tasks.runner import TaskRunner
from app.domain.tasks.schemas import TaskOut
from app.domain.tasks.services import task_message_args
from app.workers.actors.mail import queue_notification_email
from app.workers.actors.webhooks import queue_delivery
from app.workers.brokers import enqueue_from_loop
from app.workers.context import async_actor
from app.workers.errors import BROKER_DOWN
from app.workers.heartbeat import current_worker_id
from app.workers.queues import MAINTENANCE, TASKS
from app.workers.runtime import runtime, tasks_stopping
from app.workers.sweeps import follow_up, queue_each, send_each

log = structlog.get_logger(__name__)

#: A task asked to start this soon gets a turn delayed until then when it is submitted; a later one, from the sweep.
DELAY_HORIZON = timedelta(minutes=10)
#: The sweep (each half minute, app.workers.actors.tasks.sweep_tasks) sends a delayed turn for every task whose
#: `run_at` comes within this: two sweeps see each such task, so one sweep missed delays none.
COMING_DUE_WINDOW = timedelta(seconds=70)

#: A worker runs tasks one after another within one message for this long at most; then it hands the
#: next turn to the queue (so Dramatiq's time limit below bounds a message, and a stop is not held up).
CHAIN_SECONDS = 300


def artifacts() -> LocalArtifacts:
    return LocalArtifacts(get_settings().artifact_path)


@async_actor(
    actor_name="tasks.run",
    queue_name=TASKS,
    # A kind's failures never reach Dramatiq (the runner records them); what does is the database or
    # the broker failing under the worker: the turn is taken again after a backoff, not lost.
    max_retries=10,
    min_backoff=1_000,
    max_backoff=30_000,
    # Kinds enforce their own time limits; this is only the backstop above the longest chain.
    time_limit=(max(kind.time_limit_seconds for kind in KINDS.values()) + CHAIN_SECONDS + 300) * 1000,
)
async def run_task(task_id: str | None = None, attempt: int | None = None) -> None:
    """Run the fairest task that may start, then the next, until none may; the arguments only name who sent it."""
    settings = get_settings()
    rt = runtime()
    runner = TaskRunner(rt.sessions, rt.publisher, artifacts(), settings)
    worker_id = current_worker_id(dramatiq.get_broker())
    began = time.monotonic()
    while (ended := await runner.run_next(worker_id)) is not None:
        structlog.contextvars.unbind_contextvars("task_id", "user_id")
        if ended.email_notification is not None:
            # The broker client blocks: not on the loop. If this fails, the due-email sweep sends it.
            await anyio.to_thread.run_sync(queue_notification_email, ended.email_notification)
        if ended.webhook_delivery is not None:  # likewise: if this fails, the due-deliveries sweep sends it
            await anyio.to_thread.run_sync(queue_delivery, ended.webhook_delivery)
        if ended.retry_in is not None:  # a turn for when its backoff has passed
            await anyio.to_thread.run_sync(lambda: send_task(str(ended.task_id), delay=ended.retry_in))
        if tasks_stopping.is_set() or time.monotonic() - began > CHAIN_SECONDS:
            await anyio.to_thread.run_sync(send_task, None)  # the next turn, for another worker (or this one)
            return


def send_task(task_id: str | None, attempt: int | None = None, *, delay: timedelta | None = None) -> bool:
    """Send a turn (for a committed task, if named); False when the broker is unreachable (the sweeper re-sends)."""
    try:
        run_task.send_with_options(args=(task_id, attempt), delay=_milliseconds(delay))
    except BROKER_DOWN:  # the Redis broker raises redis' own errors
        log.warning("task.send_failed", task_id=task_id, attempt=attempt)
        return False
    return True


async def send_task_from_loop(
    task_id: str | None, attempt: int | None = None, *, delay: timedelta | None = None, executor: Executor | None = None
) -> bool:
    """`send_task` for a caller on an asyncio loop (the web's): no thread on Redis (`enqueue_from_loop`)."""
    try:
        await enqueue_from_loop(
            run_task.broker, run_task.message(task_id, attempt), delay=_milliseconds(delay), executor=executor
        )
    except BROKER_DOWN:
        log.warning("task.send_failed", task_id=task_id, attempt=attempt)
        return False
    return True


async def send_new_task_from_loop(task: TaskOut, executor: Executor | None = None) -> bool:
    """The turn of a task just submitted: now, or at its `run_at` when that is within DELAY_HORIZON.

    A later one gets its turn from the sweep as its time comes (`TaskKeeper.coming_due`), so no
    message waits on the broker for days; a turn lost meanwhile is made up by the sweep as for any task.
    """
    due, delay = _first_turn(task)
    return await send_task_from_loop(*task_message_args(task), delay=delay, executor=executor) if due else True


def _first_turn(task: TaskOut) -> tuple[bool, timedelta | None]:
    """Whether a new task's turn is sent now, and its delay (to its `run_at`)."""
    if task.run_at is None:
        return True, None
    wait = task.run_at - utcnow()  # a claim may take it from then on, on the claimer's clock
    if wait > DELAY_HORIZON:
        return False, None
    return True, max(wait, timedelta(0))


def _milliseconds(delay: timedelta | None) -> int | None:
    return int(delay.total_seconds() * 1000) if delay is not None else None


def send_turns(count: int) -> int:
    """Send `count` turns; how many were sent before the broker failed."""
    return send_each(range(count), lambda _: send_task(None))


@async_actor(actor_name="tasks.sweep", queue_name=MAINTENANCE, periodic=cron("* * * * *"), max_retries=0)
async def sweep_tasks() -> None:
    """Hand back running tasks whose worker is gone; send turns for tasks left queued too long.

    Workers do the first within seconds of a worker's heartbeat running out
    (app.workers.recovery); this is the backstop. Cron runs it at each minute; the scheduled
    run sends one follow-up 30 s later (which sends none), so tasks are swept every half minute.
    """
    follow_up(sweep_tasks)
    rt = runtime()
    keeper = TaskKeeper(rt.sessions, rt.publisher, artifacts(), get_settings())
    alive = await anyio.to_thread.run_sync(_alive_worker_ids)
    handed = await keeper.hand_back(alive)
    overdue = await keeper.overdue()
    sent = await anyio.to_thread.run_sync(send_turns, len(handed.requeued) + len(overdue))
    coming = await keeper.coming_due(COMING_DUE_WINDOW)
    now = utcnow()
    # A turn for each task whose run_at comes before the next sweeps, delayed until then.
    await queue_each(coming, lambda due: send_task(str(due[0]), due[1], delay=max(due[2] - now, timedelta(0))))
    if handed.requeued or handed.failed or overdue or coming:
        log.info(
            "tasks.sweep",
            resent=len(overdue),
            handed_back=len(handed.requeued) + handed.failed,
            sent=sent,
            coming_due=len(coming),
        )


def _alive_worker_ids() -> set[str] | None:
    """The ids of the live workers; None when unknown (the store does not answer, or it only knows this process)."""
    from app.workers import heartbeats

    if not heartbeats.shared:
        return None
    try:
        return {worker.id for worker in heartbeats.alive()}
    except BROKER_DOWN:
        return None


@async_actor(actor_name="tasks.purge", queue_name=MAINTENANCE, periodic=cron("@hourly"), max_retries=0)
async def purge_tasks() -> None:
    """Delete finished tasks and their artifacts past TASK_RETENTION_DAYS."""
    rt = runtime()
    deleted = await TaskKeeper(rt.sessions, rt.publisher, artifacts(), get_settings()).purge()
    log.info("tasks.purge", deleted=deleted)
