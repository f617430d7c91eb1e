"""The peer's Celery app and its task, shaped like the service's `demo` kind.

Celery's defaults throughout (prefork pool, prefetch multiplier 4, acks on receipt, the
Redis result backend storing every state change); the benchmark starts it with
`celery -A bench.peer.worker worker --concurrency 8`. Celery tasks are synchronous, so each
prefork child keeps one event loop and one async engine of its own (asyncpg, the web
app's driver) and runs the task's database work on that loop, and one Redis client for
the PUBLISH of each update.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from celery import Celery, Task
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from bench.peer import models
from bench.peer.settings import PeerSettings

settings = PeerSettings.from_environment()
celery_app = Celery("peer", broker=settings.broker_url, backend=settings.result_backend)

T = TypeVar("T")


@dataclass
class ChildResources:
    """What one worker process (a prefork child) keeps between tasks."""

    pid: int
    loop: asyncio.AbstractEventLoop
    sessions: async_sessionmaker[AsyncSession]
    events: redis.Redis

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)


_resources: ChildResources | None = None


def resources() -> ChildResources:
    """This process's loop, engine and Redis client, made on first use (after the fork)."""
    global _resources
    if _resources is None or _resources.pid != os.getpid():
        loop = asyncio.new_event_loop()
        engine = create_async_engine(settings.database_url)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        _resources = ChildResources(os.getpid(), loop, sessions, redis.Redis.from_url(settings.events_url))
    return _resources


def publish(child: ChildResources, user_id: uuid.UUID, event: str, data: dict[str, Any]) -> None:
    """One pub/sub message per update, on the user's channel, for whatever streams it to browsers."""
    child.events.publish(f"peer:events:{user_id}", json.dumps({"event": event, "data": data}, default=str))


@dataclass(frozen=True)
class Job:
    user_id: uuid.UUID
    steps: int
    step_ms: int


async def mark_running(sessions: async_sessionmaker[AsyncSession], task_id: uuid.UUID) -> Job:
    async with sessions() as session:
        task = await session.get(models.Task, task_id)
        if task is None:
            raise LookupError(f"task {task_id} not found")
        task.status = "running"
        task.started_at = models.utcnow()
        task.progress_total = int(task.params.get("steps", 100))
        await session.commit()
        return Job(task.user_id, task.progress_total, int(task.params.get("step_ms", 100)))


async def record_progress(
    sessions: async_sessionmaker[AsyncSession], task_id: uuid.UUID, current: int, message: str
) -> None:
    async with sessions() as session:
        task = await session.get(models.Task, task_id)
        if task is None:
            raise LookupError(f"task {task_id} not found")
        task.progress_current = current
        task.progress_message = message
        await session.commit()


async def mark_succeeded(
    sessions: async_sessionmaker[AsyncSession], task_id: uuid.UUID, result: dict[str, Any]
) -> uuid.UUID:
    """The final state and the owner's notification, in one transaction; the notification's id."""
    async with sessions() as session:
        task = await session.get(models.Task, task_id)
        if task is None:
            raise LookupError(f"task {task_id} not found")
        task.status = "succeeded"
        task.result = result
        task.finished_at = models.utcnow()
        notification = models.Notification(
            user_id=task.user_id, task_id=task.id, title="Task completed", message=f"{task.title} completed."
        )
        session.add(notification)
        await session.commit()
        return notification.id


@celery_app.task(bind=True, name="peer.run_demo")
def run_demo(self: Task, task_id: str) -> dict[str, int]:
    """Count through the task's steps: per step `update_state`, a row update and a PUBLISH."""
    child = resources()
    row_id = uuid.UUID(task_id)
    job = child.run(mark_running(child.sessions, row_id))
    publish(child, job.user_id, "task.updated", {"id": task_id, "status": "running"})
    for step in range(1, job.steps + 1):
        if job.step_ms:
            time.sleep(job.step_ms / 1000)
        message = f"Processing step {step} of {job.steps}"
        self.update_state(state="PROGRESS", meta={"current": step, "total": job.steps, "message": message})
        child.run(record_progress(child.sessions, row_id, step, message))
        publish(child, job.user_id, "task.updated", {"id": task_id, "status": "running", "current": step})
    result = {"steps": job.steps}
    notification_id = child.run(mark_succeeded(child.sessions, row_id, result))
    publish(child, job.user_id, "task.updated", {"id": task_id, "status": "succeeded", "result": result})
    publish(child, job.user_id, "notification.created", {"id": str(notification_id), "task_id": task_id})
    return result


@celery_app.task(name="peer.ping")
def ping() -> str:
    """What the benchmark waits for before it measures: the worker takes and runs tasks."""
    return "pong"
