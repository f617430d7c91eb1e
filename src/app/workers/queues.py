"""The broker's queues, each served by workers of its own, so one kind of job never waits behind another.

- `tasks`: users' tasks (`tasks.run`): long, many, and fair-shared between users.
- `mail`: emails and notification fan-out: short, and a person is waiting for some of them
  (a password reset).
- `maintenance`: the schedules' housekeeping (sweeps, purges) and diagnostics.

Services mode runs one `dramatiq app.workers --queues <queue>` process group per queue
(Procfile, compose.yaml); embedded, the web process runs one Dramatiq worker per queue,
each with its own threads.
"""

from __future__ import annotations

from app.config import Settings

TASKS = "tasks"
MAIL = "mail"
MAINTENANCE = "maintenance"
QUEUES = (TASKS, MAIL, MAINTENANCE)


def queue_for(actor_name: str) -> str:
    """The queue of an actor that did not name one: by its name's domain."""
    if actor_name.startswith("tasks.run"):
        return TASKS
    if actor_name.startswith(("mail.", "notifications.")):
        return MAIL
    return MAINTENANCE


def queue_threads(settings: Settings) -> dict[str, int]:
    """How many worker threads each queue gets (embedded; the Procfile passes the same numbers)."""
    return {
        TASKS: settings.worker_threads,
        MAIL: settings.mail_worker_threads,
        MAINTENANCE: settings.maintenance_worker_threads,
    }
