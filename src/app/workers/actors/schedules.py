"""Users' schedules: each minute, every due schedule starts its task (app.domain.schedules.firing).

`schedules.fire` runs at each cron minute (periodiq in services mode, the in-process loop
embedded), when the times a 5-field expression names come due. Any number of passes may run
at once (two schedulers whose Redis claim failed, `litestar schedules run-due`): each due time
still starts one task. A pass that crashes before its commit leaves the schedule due for the
next one; a task's turn lost after the commit is made up by the tasks' sweep.
"""

from __future__ import annotations

import anyio
import structlog
from periodiq import cron

from app.config import get_settings
from app.domain.clock import utcnow
from app.domain.schedules.firing import Fired, ScheduleFirer
from app.domain.schedules.services import purge_runs, runs_retention
from app.domain.tasks.services import task_message_args
from app.workers.actors.tasks import send_task
from app.workers.context import async_actor
from app.workers.runtime import runtime
from app.workers.sweeps import send_each

log = structlog.get_logger(__name__)


def send_fired(fired: list[Fired]) -> int:
    """Send a turn for each task the firing started; how many were sent before the broker failed."""
    return send_each(
        [run.task for run in fired if run.task is not None], lambda task: send_task(*task_message_args(task))
    )


@async_actor(actor_name="schedules.fire", periodic=cron("* * * * *"), max_retries=0)
async def fire_schedules() -> None:
    """Start the task of every schedule whose time has come."""
    rt = runtime()
    fired = await ScheduleFirer(rt.sessions, get_settings(), rt.publisher).fire_due()
    if fired:
        sent = await anyio.to_thread.run_sync(send_fired, fired)
        started = sum(1 for run in fired if run.task is not None)
        log.info("schedules.fired", runs=len(fired), started=started, skipped=len(fired) - started, sent=sent)


@async_actor(actor_name="schedules.purge_runs", periodic=cron("@hourly"), max_retries=0)
async def purge_schedule_runs() -> None:
    """Delete schedules' runs older than TASK_RETENTION_DAYS (the tasks they started are gone by then too)."""
    async with runtime().session() as session, session.begin():
        deleted = await purge_runs(session, utcnow() - runs_retention(get_settings()))
    log.info("schedules.purge_runs", deleted=deleted)
