"""Task rules for the people who own them: start, list, read, cancel, retry, delete.

Every state change writes a `task.updated` event in the same transaction (see
app.domain.notifications.events); the door publishes the events and sends the task's
message only after its commit, so a message never names a task that does not exist.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import msgspec
from advanced_alchemy.mixins.uuid import uuid7  # type: ignore[attr-defined]  # the models' own id default
from sqlalchemy import Table, bindparam, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from app.config import Settings
from app.domain.accounts.models import User
from app.domain.clock import utcnow
from app.domain.driver import Executor, orm_session
from app.domain.errors import Conflict, InvalidInput, LimitReached, NotFound
from app.domain.notifications.events import EventLog, EventRecord
from app.domain.notifications.models import Event
from app.domain.tasks.fairness import CLOCK_SKEW
from app.domain.tasks.kinds import KINDS, get_kind
from app.domain.tasks.models import ACTIVE, CANCELLED, FAILED, QUEUED, RUNNING, Task
from app.domain.tasks.reads import COLUMNS, row_out
from app.domain.tasks.schemas import TaskOut, TaskRequest, progress_of, task_out
from app.domain.text import control_problem
from app.domain.webhooks.outbox import attach, record_end, webhook_problems

IDEMPOTENCY_WINDOW = timedelta(hours=24)
TASK_UPDATED = "task.updated"
#: How far ahead `run_at` may be: a year and a day (a yearly job of a leap year still fits).
RUN_AT_MAX_AHEAD = timedelta(days=366)


_TASKS = cast(Table, Task.__table__)
_EVENTS = cast(Table, Event.__table__)
#: A user's unfinished tasks, counted on every submission: built once, in Core. The statuses are one bound
#: value each: a list of values is an "expanding" parameter, whose SQL SQLAlchemy renders again at every
#: execution (2.5% of the web's CPU under a submission load, py-spy).
_ACTIVE_COUNT = (
    select(func.count())
    .select_from(_TASKS)
    .where(
        _TASKS.c.user_id == bindparam("user_id"),
        _TASKS.c.status.in_([literal(status, _TASKS.c.status.type) for status in ACTIVE]),
    )
)
#: The columns a submission writes; every other column keeps its default (`_new_row`).
_SUBMITTED = (
    "id",
    "user_id",
    "kind",
    "title",
    "description",
    "status",
    "params",
    "attempts",
    "first_attempt",
    "progress_current",
    "progress_total",
    "cancel_requested",
    "idempotency_key",
    "request_fingerprint",
    "created_at",
    "enqueued_at",
    "run_at",
)
#: SQLite: the task's row as it is (the count and the event are statements of their own there).
_INSERT_TASK = insert(_TASKS).values({name: bindparam(name, type_=_TASKS.c[name].type) for name in _SUBMITTED})


def _submit_statement() -> Any:
    """Postgres: count, insert the task if under the cap, insert its event, in one statement.

    Run with the user's event lock held (taken by the statement before: this one's snapshot then
    sees every submission that held the lock before it, so the count is exact). The event's id
    is drawn after the lock, as `EventLog.record` would. Parameters: the `_SUBMITTED` columns,
    `cap` and `payload` (the task.updated event's data). Returns the count before this task and
    the event's id (NULL when over the cap: nothing was written).
    """
    counted = _ACTIVE_COUNT.with_only_columns(func.count().label("active")).cte("counted")
    task_values = select(*(bindparam(name, type_=_TASKS.c[name].type) for name in _SUBMITTED)).where(
        counted.c.active < bindparam("cap")
    )
    new_task = (
        insert(_TASKS)
        .from_select(list(_SUBMITTED), task_values)
        .returning(_TASKS.c.id, _TASKS.c.user_id)
        .cte("new_task")
    )
    event_values = select(
        new_task.c.user_id,
        literal(TASK_UPDATED, _EVENTS.c.type.type),
        bindparam("payload", type_=_EVENTS.c.payload.type),
        bindparam("created_at", type_=_EVENTS.c.created_at.type),
    )
    new_event = (
        insert(_EVENTS)
        .from_select(["user_id", "type", "payload", "created_at"], event_values)
        .returning(_EVENTS.c.id)
        .cte("new_event")
    )
    return select(counted.c.active, select(new_event.c.id).scalar_subquery())


_SUBMIT = _submit_statement()


@dataclass(frozen=True)
class CheckedRequest:
    """A submission that passed every rule: its kind's name, its params as stored, its title and start time."""

    kind: str
    params: Any
    title: str
    #: When it starts, if in the future; None: at once.
    run_at: datetime | None


def check_request(request: TaskRequest, settings: Settings, idempotency_key: str | None = None) -> CheckedRequest:
    """A submission against the rules (kind, params, text, webhook, run_at); InvalidInput naming each field."""
    kind = get_kind(request.kind)
    if kind is None:
        raise InvalidInput({"kind": f"unknown kind; one of {', '.join(sorted(KINDS))}"})
    try:
        params = kind.parse(request.params)
    except msgspec.ValidationError as exc:
        raise InvalidInput(_validation_errors(exc)) from exc
    title = kind.title if request.title is None else request.title.strip()
    problems = _text_problems(title, request.description, idempotency_key)
    problems |= webhook_problems(request.webhook, settings)
    run_at, problem = start_time(request.run_at, utcnow())
    if problem:
        problems["run_at"] = problem
    if problems:
        raise InvalidInput(problems)
    return CheckedRequest(kind=kind.name, params=msgspec.to_builtins(params), title=title, run_at=run_at)


def start_time(run_at: datetime | None, now: datetime) -> tuple[datetime | None, str | None]:
    """(when a task asked to start at `run_at` starts, in UTC: None for at once; why `run_at` is refused)."""
    if run_at is None:
        return None, None
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        return None, "must carry a UTC offset (RFC 3339), e.g. 2026-11-22T10:00:00Z or 2026-11-22T11:00:00+01:00"
    try:
        at = run_at.astimezone(UTC)
    except (OverflowError, ValueError):
        return None, "is out of range"
    if at <= now:
        return None, None  # due already: it starts at once
    if at > now + RUN_AT_MAX_AHEAD:
        return None, f"must be at most {RUN_AT_MAX_AHEAD.days} days ahead"
    return at, None


def fingerprint(request: TaskRequest) -> str:
    """The same request body gives the same fingerprint, whatever its key order."""
    canonical = msgspec.json.encode(msgspec.to_builtins(request), order="sorted")
    return hashlib.sha256(canonical).hexdigest()


def _validation_errors(exc: msgspec.ValidationError) -> dict[str, str]:
    message = str(exc)
    path = message.rsplit(" - at `", 1)
    if len(path) == 2:
        field = path[1].rstrip("`").replace("$", "params", 1)
        return {field: path[0]}
    return {"params": message}


def _text_problems(title: str, description: str | None, idempotency_key: str | None) -> dict[str, str]:
    """The task's text fields against their rules (lengths, and app.domain.text's control characters)."""
    problems = {}
    if not 1 <= len(title) <= 200:
        problems["title"] = "must be 1-200 characters"
    elif problem := control_problem(title):
        problems["title"] = problem
    if description is not None and len(description) > 2000:
        problems["description"] = "must be at most 2000 characters"
    elif problem := control_problem(description, multiline=True):
        problems["description"] = problem
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
        problems["Idempotency-Key"] = "must be 1-200 characters"
    elif problem := control_problem(idempotency_key):
        problems["Idempotency-Key"] = problem
    return problems


@dataclass(frozen=True)
class _Keyed:
    """The task an Idempotency-Key names, and the fingerprint of the request that made it."""

    out: TaskOut
    fingerprint: str | None


#: The caller's task with an Idempotency-Key (parameters user_id, key): a TaskOut's columns, then the fingerprint.
_BY_KEY = select(*(_TASKS.c[column.key] for column in COLUMNS), _TASKS.c.request_fingerprint).where(
    _TASKS.c.user_id == bindparam("user_id", type_=_TASKS.c.user_id.type),
    _TASKS.c.idempotency_key == bindparam("key", type_=_TASKS.c.idempotency_key.type),
)
#: A key whose window has passed names no task any more (parameter task_id).
_FORGET_KEY = (
    update(_TASKS).where(_TASKS.c.id == bindparam("task_id", type_=_TASKS.c.id.type)).values(idempotency_key=None)
)


def _replay(earlier: _Keyed, print_: str) -> TaskOut:
    """The task an Idempotency-Key already names, if this request is the same one; Conflict if not."""
    if earlier.fingerprint != print_:
        raise Conflict("This Idempotency-Key was used with a different request.", "Idempotency-Key")
    return earlier.out


async def record_task_event(events: EventLog, task: Task) -> None:
    await record_task_out(events, task_out(task), task.user_id)


async def record_task_out(events: EventLog, task: TaskOut, user_id: UUID) -> None:
    """The `task.updated` event of a task already turned into its TaskOut (a row read without the ORM)."""
    await events.record(TASK_UPDATED, msgspec.to_builtins(task), user_id=user_id)


class TaskService:
    """Task rules in the caller's transaction: a session's, or for a submission a driver transaction
    (app.domain.driver: `create` runs Core statements only); the other rules need a session."""

    def __init__(self, session: Executor, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self.events = EventLog(session)
        #: The webhook delivery the last cancel wrote, for the caller to send after commit.
        self.webhook_delivery: UUID | None = None

    async def create(
        self, user: User, request: TaskRequest, idempotency_key: str | None = None
    ) -> tuple[TaskOut, bool]:
        """(task, created): an earlier task with the same Idempotency-Key and body is returned as it is.

        The hot path of every submission: on Postgres the lock, then one statement that counts,
        inserts the task and its event (app.domain.tasks.services._submit_statement).
        """
        valid = check_request(request, self.settings, idempotency_key)
        print_ = fingerprint(request)
        # The user's event lock, which recording the task's event takes anyway, taken before the
        # key's look-up and the count: one user's submissions queue here, so a second request with
        # the same key finds the first one's task (Postgres), and the cap holds under concurrency.
        await self.events.lock(user.id)
        if idempotency_key:
            earlier = await self._by_key(user.id, idempotency_key)
            if earlier is not None:
                if earlier.out.created_at > utcnow() - IDEMPOTENCY_WINDOW:
                    return _replay(earlier, print_), False
                # The window has passed: the key may name a new task.
                await self.session.execute(_FORGET_KEY, {"task_id": earlier.out.id})

        row = _new_row(user.id, valid.kind, valid.title, request.description, valid.params, valid.run_at)
        row |= {"idempotency_key": idempotency_key or None, "request_fingerprint": print_}
        task = _submitted_out(row)
        try:
            await self._insert(row, task)
        except IntegrityError:
            # Another request with this key committed its task after our look-up (SQLite has no lock to
            # queue on): nothing of ours is worth keeping, and that task answers as a replay.
            await self.session.rollback()
            winner = await self._by_key(user.id, idempotency_key) if idempotency_key else None
            if winner is None:
                raise
            return _replay(winner, print_), False
        if request.webhook is not None:
            await attach(self.session, user.id, task.id, request.webhook)
        return task, True

    async def _insert(self, row: dict[str, Any], task: TaskOut) -> None:
        """Write a new task and its event under the cap, with the user's event lock held; LimitReached over it.

        Core statements, no ORM unit of work: on Postgres the count, the task and its event are
        one statement; on SQLite (one writer at a time, held since `lock`) three.
        """
        payload = msgspec.to_builtins(task)
        user_id = row["user_id"]
        if self.events.postgres:
            parameters = {**row, "cap": self.settings.max_active_tasks, "payload": payload}
            active, event_id = (await self.session.execute(_SUBMIT, parameters)).one()
            if event_id is None:
                raise self._over_cap(int(active))
            self.events.written(
                EventRecord(
                    id=int(event_id), type=TASK_UPDATED, data=payload, created_at=row["created_at"], user_id=user_id
                )
            )
            return
        await self._refuse_over_cap_of(user_id)
        await self.session.execute(_INSERT_TASK, row)
        await self.events.record(TASK_UPDATED, payload, user_id=user_id)

    async def _refuse_over_cap(self, user: User) -> None:
        """LimitReached when the user has MAX_ACTIVE_TASKS unfinished tasks; call with the user's event lock held."""
        await self._refuse_over_cap_of(user.id)

    async def _refuse_over_cap_of(self, user_id: UUID) -> None:
        active = int(await self.session.scalar(_ACTIVE_COUNT, {"user_id": user_id}) or 0)
        if active >= self.settings.max_active_tasks:
            raise self._over_cap(active)

    def _over_cap(self, active: int) -> LimitReached:
        return LimitReached(f"You have {active} unfinished tasks; the limit is {self.settings.max_active_tasks}.")

    async def _by_key(self, user_id: UUID, idempotency_key: str) -> _Keyed | None:
        row = (await self.session.execute(_BY_KEY, {"user_id": user_id, "key": idempotency_key})).first()
        return None if row is None else _Keyed(out=row_out(row[:-1]), fingerprint=row[-1])

    async def get(self, user: User, task_id: UUID) -> Task:
        task = await orm_session(self.session).scalar(select(Task).where(Task.id == task_id, Task.user_id == user.id))
        if task is None:
            raise NotFound("No such task.")
        return task

    async def cancel(self, user: User, task_id: UUID) -> Task:
        """A queued task is cancelled at once; a running one is asked to stop at its next step."""
        task = await self.get(user, task_id)
        if task.status == QUEUED:
            task.status, task.finished_at = CANCELLED, utcnow()
            await orm_session(self.session).flush()
            await record_task_event(self.events, task)
            # Its webhook's delivery, sent by the caller after commit (`queue_delivery`) or by the sweeper.
            self.webhook_delivery = await record_end(self.session, task_out(task))
        elif task.status == RUNNING:
            task.cancel_requested = True
            await orm_session(self.session).flush()
        else:
            raise Conflict(f"The task has already {task.status}.")
        return task

    async def retry(self, user: User, task_id: UUID) -> tuple[Task, str | None]:
        """Queue a failed or cancelled task again; returns it and the old artifact to delete after commit.

        A retry starts a new round of TASK_MAX_ATTEMPTS attempts, and counts against the
        user's MAX_ACTIVE_TASKS as a new task does (under the same lock, so concurrent
        retries and submissions cannot overshoot it together).
        """
        await self.events.lock(user.id)
        task = await self.get(user, task_id)
        if task.status not in (FAILED, CANCELLED):
            raise Conflict(f"Only a failed or cancelled task can be retried; this one is {task.status}.")
        await self._refuse_over_cap(user)
        old_artifact = task.artifact
        task.status, task.attempts = QUEUED, task.attempts + 1
        task.first_attempt = task.attempts
        task.worker_id = None
        task.error = task.result = task.artifact = None
        task.started_at = task.finished_at = task.heartbeat_at = None
        task.progress_current = task.progress_total = 0
        task.progress_message = None
        task.cancel_requested = False
        task.enqueued_at = utcnow()
        task.run_at = None  # a retry starts at once, whatever time the task first asked for
        await orm_session(self.session).flush()
        await record_task_event(self.events, task)
        return task, old_artifact

    async def delete(self, user: User, task_id: UUID) -> str | None:
        """Delete a finished task; returns its artifact key to delete after commit."""
        task = await self.get(user, task_id)
        if task.status in ACTIVE:
            raise Conflict(f"A {task.status} task cannot be deleted; cancel it first.")
        artifact = task.artifact
        await orm_session(self.session).delete(task)
        await orm_session(self.session).flush()
        return artifact


def _new_row(
    user_id: UUID, kind: str, title: str, description: str | None, params: Any, run_at: datetime | None = None
) -> dict[str, Any]:
    """The `_SUBMITTED` columns of a new queued task (the model's defaults, set here: no ORM object is built).

    A task asked to start later is queued with `enqueued_at` at its `run_at` plus the claim's CLOCK_SKEW
    allowance (app.domain.tasks.fairness), so that no claim takes it before its time on the claimer's clock.
    """
    now = utcnow()
    return {
        "id": uuid7(),
        "user_id": user_id,
        "kind": kind,
        "title": title,
        "description": description,
        "status": QUEUED,
        "params": params,
        "attempts": 1,
        "first_attempt": 1,
        "progress_current": 0,
        "progress_total": 0,
        "cancel_requested": False,
        "idempotency_key": None,
        "request_fingerprint": None,
        "created_at": now,
        "enqueued_at": now if run_at is None else run_at + CLOCK_SKEW,
        "run_at": run_at,
    }


def _submitted_out(row: dict[str, Any]) -> TaskOut:
    """What `task_out` shows of a task just written from `row`."""
    return TaskOut(
        id=row["id"],
        kind=row["kind"],
        title=row["title"],
        description=row["description"],
        status=QUEUED,
        progress=progress_of(QUEUED, 0, 0, None),
        params=row["params"],
        result=None,
        error=None,
        attempts=1,
        created_at=row["created_at"],
        started_at=None,
        finished_at=None,
        run_at=row["run_at"],
    )


def task_message_args(task: Task | TaskOut) -> tuple[str, int]:
    """What a task's message carries: the task and the attempt it is for."""
    return str(task.id), task.attempts


def describe_kinds() -> list[dict[str, Any]]:
    return [
        {"kind": k.name, "title": k.title, "description": k.description, "params_schema": k.params_schema()}
        for k in KINDS.values()
    ]
