"""Running one attempt of a task: claim it, run its kind, keep its progress, write how it ended.

A worker does not run the task a message names: it claims the fairest task that may start
(app.domain.tasks.fairness), so a message only says "a thread is free". At-least-once
delivery is assumed: the claim is a compare-and-set on the task's status, so a duplicate
or stale message finds nothing more to claim than any other and does nothing. Progress is
written at most every TASK_PROGRESS_INTERVAL_MS (the claim counts as a write): a report
that comes sooner waits, and is written when the interval has passed or, if the attempt
ends first, with its end, so a short task costs two writes (claim and end) however many
steps it reports. Each progress write also refreshes the task's heartbeat and reads its
cancel flag. Every write is conditional on the task still being this attempt's, so an
attempt that was handed back (its worker looked dead) or deleted stops quietly instead
of overwriting its successor.

Log lines (`context.log`, app.domain.tasks.logs) ride on the same writes: what waits is
inserted with the next progress write, requeue or end, with a `task.log` event before the
write's `task.updated`, so a line costs no transaction of its own and none is lost when the
attempt ends, fails or is retried. Lines alone (no progress report) are written after the
interval by the same keeper, with a heartbeat instead of a progress update.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from functools import lru_cache
from typing import Any, cast
from uuid import UUID

import msgspec
import structlog
from sqlalchemy import Table, Update, and_, bindparam, case, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.clock import utcnow
from app.domain.driver import is_postgres, writing
from app.domain.notifications.events import EventLog, EventPublisher
from app.domain.notifications.services import NewNotification, add_notification_once
from app.domain.tasks.artifacts import ArtifactStore
from app.domain.tasks.fairness import claim_statement, due_by, limits, over_cap
from app.domain.tasks.kinds import get_kind
from app.domain.tasks.kinds.base import ArtifactSink, TaskCancelled
from app.domain.tasks.logs import LogBuffer, LogLevel, Staged
from app.domain.tasks.models import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Task
from app.domain.tasks.reads import COLUMNS, row_out
from app.domain.tasks.schemas import TaskOut
from app.domain.tasks.services import TASK_UPDATED, record_task_out
from app.domain.webhooks.outbox import record_end

log = structlog.get_logger(__name__)


class Outcome(Enum):
    FINISHED = "finished"  # succeeded, failed or cancelled: nothing more to do
    RETRY = "retry"  # queued again for the next attempt; the caller re-delivers it after a backoff
    SKIPPED = "skipped"  # not this attempt's to run (duplicate, stale, cancelled, deleted)


@dataclass(frozen=True)
class Ended:
    """What the door does after an attempt ends.

    Hand `email_notification`'s pending email to the mailer, if any, and `webhook_delivery` to the
    webhooks actor; after a RETRY, make sure a worker looks again in `retry_in` (the task waits out
    its backoff, queued).
    """

    outcome: Outcome
    task_id: UUID
    email_notification: UUID | None = None
    webhook_delivery: UUID | None = None
    retry_in: timedelta | None = None


@dataclass(frozen=True)
class _Claimed:
    """A task just claimed: what its `running` event shows, whose it is, the first attempt of its round, and
    whether it has a webhook."""

    task: TaskOut
    user_id: UUID
    first_attempt: int
    webhook: bool


@dataclass(frozen=True)
class _Ending:
    """How an attempt ended, to be written once its keeper has stopped: QUEUED with `retry_in` is a retry."""

    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    retry_in: timedelta | None = None


#: A pick given back because its owner went over a cap is tried again this often, skipping that owner.
CLAIM_TRIES = 5


#: SQLite: a write that changes nothing, which takes the database's write lock until commit.
_SQLITE_WRITE_LOCK = text("UPDATE task SET id = id WHERE 0")

_TASKS = cast(Table, Task.__table__)
#: What every write of an attempt returns: a TaskOut's columns (app.domain.tasks.reads.row_out), then the owner.
_OUT = (*(_TASKS.c[column.key] for column in COLUMNS), _TASKS.c.user_id)
#: The attempt's own row: still running, still this attempt (parameters `task_id`, `attempt`).
_MINE = and_(
    _TASKS.c.id == bindparam("task_id", type_=_TASKS.c.id.type),
    _TASKS.c.status == RUNNING,
    _TASKS.c.attempts == bindparam("attempt"),
)
#: A succeeded task's progress is full: a total it did not count up to is reached at its end.
_FULL_PROGRESS = case(
    (
        and_(_TASKS.c.progress_total > 0, _TASKS.c.progress_current < _TASKS.c.progress_total),
        _TASKS.c.progress_total,
    ),
    else_=_TASKS.c.progress_current,
)


def backoff(settings: Settings, attempt: int) -> timedelta:
    """How long a task waits, queued, before its next attempt after attempt `attempt` of its round failed.

    TASK_RETRY_MIN_SECONDS, doubling per attempt up to TASK_RETRY_MAX_SECONDS, give or take the
    claim's CLOCK_SKEW allowance (app.domain.tasks.fairness).
    """
    seconds = settings.task_retry_min_seconds * 2 ** max(0, attempt - 1)
    return timedelta(seconds=min(settings.task_retry_max_seconds, seconds))


class _Lost(Exception):
    """The task stopped being this attempt's (handed back, deleted)."""


#: Progress not written yet: (current, total, message).
_Progress = tuple[int, int, str | None]


@dataclass
class _Context:
    runner: TaskRunner
    task_id: UUID
    user_id: UUID
    attempt: int
    #: Whether the task has a webhook, to be told of the attempt's end (the outbox).
    webhook: bool = True
    artifact_key: str | None = None
    #: When the task row was last written (the claim, a progress write), monotonic.
    last_write: float = field(default_factory=time.monotonic)
    #: The latest report the interval held back; written by `_keep` or with the end.
    pending: _Progress | None = None
    #: Set when a report waits, for `_keep`.
    due: asyncio.Event = field(default_factory=asyncio.Event)
    #: What a write in the background found (a cancel request, the task lost, an error), raised at the next report.
    failure: BaseException | None = None
    #: Held by every write of the task row, so that ending the attempt never cuts one off midway.
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Log lines not written yet; set in __post_init__ (they need the task and the attempt).
    logs: LogBuffer = field(init=False)

    def __post_init__(self) -> None:
        self.logs = LogBuffer(self.task_id, self.attempt)

    async def progress(self, current: int, total: int, message: str | None = None) -> None:
        self._raise_failure()
        self.pending = (current, total, message)
        if time.monotonic() - self.last_write < self.runner.interval:
            self.due.set()
            return
        await self.flush()
        self._raise_failure()

    async def log(self, message: str, level: LogLevel = "info") -> None:
        """Hold a line for the next write of the task; a full buffer is written now."""
        self._raise_failure()
        self.logs.add(message, level)
        if self.logs.full:
            await self.flush()
            self._raise_failure()
        elif self.logs.waiting:
            self.due.set()

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def flush(self) -> None:
        """Write the pending report and lines with the heartbeat; a cancel request is raised at the next report."""
        async with self.writing:
            report = self.pending
            if report is None and not self.logs.waiting:
                return
            self.last_write = time.monotonic()
            cancel = await self.runner._write_progress(self, report)
            if self.pending is report:
                self.pending = None
            if cancel:
                self.failure = TaskCancelled()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.runner.sessions() as session:
            yield session

    @asynccontextmanager
    async def artifact(self, filename: str) -> AsyncIterator[ArtifactSink]:
        key = self.runner.artifacts.key(self.user_id, self.task_id, filename)
        async with self.runner.artifacts.writer(key).open() as sink:
            yield sink
        self.artifact_key = key


class TaskRunner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publisher: EventPublisher,
        artifacts: ArtifactStore,
        settings: Settings,
    ) -> None:
        self.sessions = sessions
        self.publisher = publisher
        self.artifacts = artifacts
        self.settings = settings
        self.interval = settings.task_progress_interval_ms / 1000
        # A running task is written at least this often: a worker gone for WORKER_STALE_SECONDS leaves
        # its tasks unwritten that long, which is when they are handed back (app.domain.tasks.maintenance).
        self.heartbeat_seconds = settings.worker_stale_seconds / 3

    async def run_next(self, worker_id: str | None) -> Ended | None:
        """Claim the fairest task that may start and run that attempt; None when no task may start now."""
        claimed = await self._claim(worker_id)
        if claimed is None:
            return None
        task = claimed.task
        task_id, attempt = task.id, task.attempts
        round_attempt = attempt - claimed.first_attempt + 1
        last_try = round_attempt >= self.settings.task_max_attempts
        retry_in = backoff(self.settings, round_attempt)
        structlog.contextvars.bind_contextvars(task_id=str(task_id), user_id=str(claimed.user_id))
        context = _Context(self, task_id, claimed.user_id, attempt, claimed.webhook)
        keeper = asyncio.create_task(self._keep(context))
        try:
            ending = await self._attempt(task, context, last_try, retry_in)
        finally:
            # The keeper stops before the end is written, never in the middle of a write: a query cut off by a
            # cancel would leave its connection unusable, and a write of the keeper beside the end's would stage
            # the same waiting log lines (the end failed on their duplicate keys and left the task running).
            async with context.writing:
                keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if ending is None:
            log.info("task.lost", attempt=attempt)
            await self._discard_if_deleted(context)
            return Ended(Outcome.SKIPPED, task_id)
        if ending.retry_in is not None:
            return await self._requeue(context, ending.error or "", ending.retry_in)
        return await self._end(context, ending.status, result=ending.result, error=ending.error)

    async def _attempt(self, task: TaskOut, context: _Context, last_try: bool, retry_in: timedelta) -> _Ending | None:
        """Run the task's kind; how the attempt ends, its closing log line added (None: the task was lost)."""
        kind = get_kind(task.kind)
        attempt = context.attempt
        try:
            if kind is None:
                raise LookupError(f"Unknown task kind {task.kind!r}")
            async with asyncio.timeout(kind.time_limit_seconds):
                result = await kind.run(kind.parse(task.params), context)
        except _Lost:
            return None
        except TaskCancelled:
            context.logs.add("Cancelled.", "warning")
            return _Ending(CANCELLED)
        except TimeoutError:
            limit = kind.time_limit_seconds if kind else 0
            error = f"Stopped: it ran longer than its time limit of {limit} s."
            context.logs.add(error, "error")
            return _Ending(FAILED, error=error)
        except Exception as exc:  # noqa: BLE001 - any failure of a kind is the task's failure
            error = f"{type(exc).__name__}: {exc}"
            log.warning("task.attempt_failed", attempt=attempt, error=error, last_try=last_try)
            if last_try:
                context.logs.add(f"Attempt {attempt} failed, the last of its round: {error}", "error")
                return _Ending(FAILED, error=error)
            seconds = round(retry_in.total_seconds(), 1)
            context.logs.add(f"Attempt {attempt} failed: {error}; trying again in about {seconds:g} s.", "warning")
            return _Ending(QUEUED, error=error, retry_in=retry_in)
        return _Ending(SUCCEEDED, result=result)

    async def _claim(self, worker_id: str | None) -> _Claimed | None:
        """The fair claim (app.domain.tasks.fairness), recorded with its `running` event.

        Postgres: the claim's RETURNING takes the owner's event locks, and the event's insert counts
        the owner's running tasks again under them (`over_cap`), writing nothing when the owner went
        over; with the BEGIN and COMMIT, four round trips. SQLite: the write lock first, then the claim
        and its event (one writer: no count again).
        """
        per_user, per_kind = limits(self.settings)
        passed_over: list[UUID] = []
        for _ in range(CLAIM_TRIES):
            async with writing(self.sessions) as session:
                postgres = is_postgres(session)
                if not postgres:
                    # One writer at a time: wait for the write lock first, then read the clock, so a task
                    # committed while this claim waited is not taken for one queued in the future.
                    await session.execute(_SQLITE_WRITE_LOCK)
                now = utcnow()
                parameters = {"now": now, "due_by": due_by(now), "worker_id": worker_id, "passed_over": passed_over}
                claim = claim_statement(per_user, per_kind, postgres=postgres)
                row = (await session.execute(claim, parameters)).first()
                if row is None:
                    return None
                width = len(COLUMNS)
                claimed = _Claimed(
                    task=row_out(row[:width]),
                    user_id=row[width],
                    first_attempt=row[width + 1],
                    webhook=bool(row[width + 2]),
                )
                events = EventLog(session)
                if not postgres:
                    await record_task_out(events, claimed.task, claimed.user_id)
                # Under the owner's lock (taken by the claim), count again: a claim of another of this user's
                # tasks that committed meanwhile is counted now, and over a cap the pick is given back.
                elif not await events.record_unless(
                    TASK_UPDATED,
                    msgspec.to_builtins(claimed.task),
                    user_id=claimed.user_id,
                    refused=over_cap(per_user, per_kind),
                    parameters={"kind": claimed.task.kind},
                ):
                    await session.rollback()
                    passed_over.append(claimed.user_id)
                    continue
            await events.publish(self.publisher)
            return claimed
        return None

    async def _write_progress(self, context: _Context, report: _Progress | None) -> bool:
        """Store progress (if reported), waiting log lines and the heartbeat; True when the user asked to cancel."""
        async with writing(self.sessions) as session:
            if report is None:
                row = (await session.execute(_TOUCH, {**_mine(context), "now": utcnow()})).first()
            else:
                current, total, message = report
                values = {"current": current, "total": total, "message": message, "now": utcnow()}
                row = (await session.execute(_PROGRESS, {**_mine(context), **values})).first()
            if row is None:
                raise _Lost()
            events = EventLog(session)
            staged = await context.logs.stage(session)
            recorded = _log_events(context, staged)
            if report is not None and not recorded:
                await _record_row(events, row)  # the hot path as it was: one event, its cacheable statement
            else:
                if report is not None:
                    recorded.append((TASK_UPDATED, msgspec.to_builtins(row_out(row[: len(COLUMNS)]))))
                await events.record_several(row[-2], recorded)
        context.logs.written(staged)
        await events.publish(self.publisher)
        return bool(row[-1])

    async def _keep(self, context: _Context) -> None:
        """Write a held-back report once the interval has passed; keep the heartbeat fresh through long steps.

        A heartbeat that cannot be written (the database is away) is only tried again later:
        if the database stays away for longer than TASK_STALE_SECONDS (or this worker's own
        heartbeat in Redis stops too), the task is handed back and this attempt's next write
        finds it lost.
        """
        while True:
            try:
                async with asyncio.timeout(self.heartbeat_seconds):
                    await context.due.wait()
            except TimeoutError:
                try:
                    async with context.writing, writing(self.sessions) as session:
                        await session.execute(_HEARTBEAT, {**_mine(context), "now": utcnow()})
                except Exception as exc:  # noqa: BLE001 - a missed heartbeat is not the task's failure
                    log.warning("task.heartbeat_failed", attempt=context.attempt, error=str(exc))
                continue
            context.due.clear()
            await asyncio.sleep(max(0.0, context.last_write + self.interval - time.monotonic()))
            try:
                await context.flush()
            except Exception as exc:  # noqa: BLE001 - the kind meets it at its next report
                context.failure = exc
                return

    async def _requeue(self, context: _Context, error: str, retry_in: timedelta) -> Ended:
        values = {"error": error, "next_attempt": context.attempt + 1, "enqueued_at": utcnow() + retry_in}
        async with writing(self.sessions) as session:
            row = (await session.execute(_REQUEUE, {**_mine(context), **values})).first()
            if row is None:
                return Ended(Outcome.SKIPPED, context.task_id)
            events = EventLog(session)
            staged = await context.logs.stage(session)
            recorded = _log_events(context, staged)
            recorded.append((TASK_UPDATED, msgspec.to_builtins(row_out(row[: len(COLUMNS)]))))
            await events.record_several(row[-1], recorded)
        context.logs.written(staged)
        await events.publish(self.publisher)
        return Ended(Outcome.RETRY, context.task_id, retry_in=retry_in)

    async def _end(
        self, context: _Context, status: str, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> Ended:
        """Write how the attempt ended (`_write_end`); an attempt that lost its task writes nothing."""
        try:
            return await self._write_end(context, status, result=result, error=error)
        except _Lost:
            await self._discard_if_deleted(context)
            return Ended(Outcome.SKIPPED, context.task_id)

    async def _write_end(
        self, context: _Context, status: str, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> Ended:
        """Write how the attempt ended, its `task.updated` event and (succeeded, failed) the owner's notification.

        One transaction: the task's UPDATE; its log lines, if any wait; its webhook's delivery, if it has a
        webhook; then the notification (its email marked pending when the owner wants one) with the events,
        one statement on Postgres (`add_notification_once`), two on SQLite.
        """
        email: UUID | None = None
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error, "result": result}
        if context.pending is not None:  # the last report, held back by the interval, goes with the end
            current, total, message = context.pending
            if status == SUCCEEDED and total and current < total:
                current = total
            values |= {"progress_current": current, "progress_total": total, "progress_message": message}
        if status == SUCCEEDED:
            values["artifact"] = context.artifact_key
        fill_up = status == SUCCEEDED and context.pending is None
        parameters = _mine(context) | {f"{_END}{column}": value for column, value in values.items()}
        async with writing(self.sessions) as session:
            statement = _end_statement(tuple(values), fill_up=fill_up)
            row = (await session.execute(statement, parameters)).first()
            if row is None:
                raise _Lost()
            task, user_id = row_out(row[:-1]), row[-1]
            events = EventLog(session)
            staged = await context.logs.stage(session)  # the lines first: they came before the end
            recorded = _log_events(context, staged)
            recorded.append((TASK_UPDATED, msgspec.to_builtins(task)))
            # The task's webhook is told of this end (the outbox); a task without one has no statement to run.
            webhook = await record_end(session, task) if context.webhook else None
            if status in (SUCCEEDED, FAILED):
                # The owner's notification, recorded with the events (on Postgres, in their statement).
                created = await _notify(events, recorded, task, user_id)
                email = created.out.id if created is not None and created.email_pending else None
            else:
                await events.record_several(user_id, recorded)
        context.logs.written(staged)
        await events.publish(self.publisher)
        if status != SUCCEEDED:
            await self._discard_artifact(context)
        return Ended(Outcome.FINISHED, context.task_id, email_notification=email, webhook_delivery=webhook)

    async def _discard_artifact(self, context: _Context) -> None:
        """Remove the file this attempt wrote, if any: its task did not keep it."""
        if context.artifact_key:
            await self.artifacts.delete(context.artifact_key)

    async def _discard_if_deleted(self, context: _Context) -> None:
        """An attempt that lost its task: remove its file if the task is gone (deleted, with its owner's account
        perhaps); a task handed back to another attempt keeps its folder, which that attempt writes in."""
        if not context.artifact_key:
            return
        async with self.sessions() as session:
            exists = await session.scalar(select(_TASKS.c.id).where(_TASKS.c.id == context.task_id))
        if exists is None:
            await self._discard_artifact(context)


#: The prefix of `_end_statement`'s parameters (apart from those of `_MINE`).
_END = "end_"


@lru_cache(maxsize=16)
def _end_statement(columns: tuple[str, ...], *, fill_up: bool) -> Update:
    """An attempt's end: its `columns` set from parameters `end_<column>`, and with `fill_up` the progress
    filled up in SQL (`_FULL_PROGRESS`); returns `_OUT`. Built once per shape: building and keying an
    UPDATE for every task's end was about 6% of a worker's busy time (py-spy, docs/benchmarks.md)."""
    values: dict[str, Any] = {column: bindparam(f"{_END}{column}", type_=_TASKS.c[column].type) for column in columns}
    if fill_up:
        values["progress_current"] = _FULL_PROGRESS
    return update(_TASKS).where(_MINE).values(values).returning(*_OUT)


def _mine(context: _Context) -> dict[str, Any]:
    """The parameters of `_MINE`: this attempt's task."""
    return {"task_id": context.task_id, "attempt": context.attempt}


#: Progress and the heartbeat; returns the task (`_OUT`) and its cancel flag. Parameters: `_MINE`'s, current,
#: total, message, now.
_PROGRESS = (
    update(_TASKS)
    .where(_MINE)
    .values(
        progress_current=bindparam("current"),
        progress_total=bindparam("total"),
        progress_message=bindparam("message", type_=_TASKS.c.progress_message.type),
        heartbeat_at=bindparam("now", type_=_TASKS.c.heartbeat_at.type),
    )
    .returning(*_OUT, _TASKS.c.cancel_requested)
)
#: The heartbeat with log lines and no progress report; returns the owner and the cancel flag. Parameters:
#: `_MINE`'s, now.
_TOUCH = (
    update(_TASKS)
    .where(_MINE)
    .values(heartbeat_at=bindparam("now", type_=_TASKS.c.heartbeat_at.type))
    .returning(_TASKS.c.user_id, _TASKS.c.cancel_requested)
)
#: The heartbeat alone, through a long step. Parameters: `_MINE`'s, now.
_HEARTBEAT = update(_TASKS).where(_MINE).values(heartbeat_at=bindparam("now", type_=_TASKS.c.heartbeat_at.type))
#: Queued again for the next attempt, due after its backoff. Parameters: `_MINE`'s, error, next_attempt, enqueued_at.
_REQUEUE = (
    update(_TASKS)
    .where(_MINE)
    .values(
        status=QUEUED,
        attempts=bindparam("next_attempt"),
        error=bindparam("error", type_=_TASKS.c.error.type),
        heartbeat_at=None,
        worker_id=None,
        enqueued_at=bindparam("enqueued_at", type_=_TASKS.c.enqueued_at.type),
    )
    .returning(*_OUT)
)


async def _record_row(events: EventLog, row: Sequence[Any]) -> None:
    """The `task.updated` event of a row that starts with `_OUT`."""
    width = len(COLUMNS)
    await record_task_out(events, row_out(row[:width]), row[width])


def _log_events(context: _Context, staged: Staged | None) -> list[tuple[str, dict[str, Any]]]:
    """The `task.log` event of the lines a write staged, if it staged any, as the first event of that write."""
    return [staged.event(context.task_id)] if staged is not None and staged.lines else []


async def _notify(
    events: EventLog, before: list[tuple[str, dict[str, Any]]], task: TaskOut, user_id: UUID
) -> NewNotification | None:
    """One notification per ended attempt, recorded after the events `before`; None when it existed."""
    ok = task.status == SUCCEEDED
    title = "Task completed" if ok else "Task failed"
    message = f"“{task.title}” {'completed' if ok else 'failed'}" + ("." if ok else f": {task.error}")
    return await add_notification_once(
        events,
        before,
        user_id=user_id,
        category="task",
        title=title,
        message=message,
        task_id=task.id,
        dedupe_key=f"task:{task.id}:{task.attempts}:{task.status}",
    )
