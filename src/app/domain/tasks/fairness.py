"""Which queued task starts next: fair shares between users, within each user's running caps.

A worker thread with nothing to do claims one task, the fairest that may start:

- *may start*: queued, due (`enqueued_at` is before `due_by`, the claim's clock plus
  CLOCK_SKEW: a retry waits out its backoff, and a task another machine just queued is
  not taken for a future one), and
  its owner runs fewer than MAX_RUNNING_PER_USER tasks, and fewer than MAX_RUNNING_PER_KIND
  of its kind;
- *fairest*: of the owners with the fewest running tasks, the oldest task (then the lowest id).

So a user who queued 100 tasks holds at most MAX_RUNNING_PER_USER threads, and another
user's new task is the next to start when a thread frees. The claim is one UPDATE whose
subquery picks the row with `FOR UPDATE SKIP LOCKED` on Postgres (concurrent claimers
never wait for each other and never pick the same row; SQLite has one writer at a time,
where the statement alone is atomic). Two claimers picking two tasks of one user at once
could both see the user below the cap; on Postgres the claim then takes the user's lock
(in the claim's own RETURNING) and counts again in its next statement, the insert of its
`running` event (`over_cap`), which writes nothing if the user went over: the claim then
gives its pick back.

The claim costs what the owners of queued tasks and the running tasks cost, not what the
queue holds: with one user's 8,000 tasks queued, 16 ms and ~3,000 buffers per claim when it
read and sorted every queued task, 1-2 ms and ~500 buffers now (Postgres, 20 owners).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Table,
    Uuid,
    all_,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.dml import ReturningUpdate

from app.config import Settings
from app.domain.notifications.events import user_lock_expressions
from app.domain.tasks.models import QUEUED, RUNNING, Task
from app.domain.tasks.reads import COLUMNS
from app.domain.webhooks.models import TaskWebhook

_TASKS = cast(Table, Task.__table__)
_HOOKS = cast(Table, TaskWebhook.__table__)
#: How far the clocks of the processes that queue tasks and claim them may differ.
CLOCK_SKEW = timedelta(seconds=1)


def due_by(now: datetime) -> datetime:
    """Tasks due before this may start at `now` (on the claimer's clock)."""
    return now + CLOCK_SKEW


def _running(owner: Any, kind: Any = None) -> Any:
    """How many tasks of `owner` (a user id column) run now (of `kind` too, when given): a scalar subquery."""
    mine = _TASKS.alias()
    conditions = [mine.c.user_id == owner, mine.c.status == RUNNING]
    if kind is not None:
        conditions.append(mine.c.kind == kind)
    return select(func.count()).select_from(mine).where(*conditions).scalar_subquery()


def _running_by_owner(per_kind: Sequence[tuple[str, int]]) -> Any:
    """How many tasks each owner runs now (`n`), and of each capped kind (`n0`, `n1`...): one pass over the
    running tasks, grouped by owner. A count per queued row instead cost a claim 140 ms with 4,500 tasks
    queued (index entries of finished tasks, not yet vacuumed, were read again for every candidate)."""
    running = _TASKS.alias()
    counts = [func.count().label("n")]
    counts += [
        func.count().filter(running.c.kind == kind).label(f"n{index}") for index, (kind, _) in enumerate(per_kind)
    ]
    return select(running.c.user_id, *counts).where(running.c.status == RUNNING).group_by(running.c.user_id).subquery()


def _kind_caps(
    kind: Any, running_of_kind: Callable[[int], Any], per_kind: Sequence[tuple[str, int]]
) -> list[ColumnElement[bool]]:
    """For each capped kind: the task is of another kind, or its owner runs fewer of that kind than the cap
    (`running_of_kind(index)`: the owner's count of the index-th capped kind, `n{index}` of `_running_by_owner`)."""
    return [or_(kind != name, running_of_kind(index) < limit) for index, (name, limit) in enumerate(per_kind)]


class Startable(NamedTuple):
    """Queued tasks that may start now: `candidate` joined with its owner's running counts, and the conditions."""

    source: FromClause
    conditions: list[ColumnElement[bool]]


def startable(candidate: Any, per_user: int, per_kind: Sequence[tuple[str, int]]) -> Startable:
    """The queued `candidate` rows (a task table alias) that may start now: what the sweeps count and send."""
    owners = _running_by_owner(per_kind)
    mine = func.coalesce(owners.c.n, 0)
    conditions: list[ColumnElement[bool]] = [
        candidate.c.status == QUEUED,
        candidate.c.enqueued_at <= bindparam("due_by", type_=_TASKS.c.enqueued_at.type),
        mine < per_user,
        *_kind_caps(candidate.c.kind, lambda index: func.coalesce(owners.c[f"n{index}"], 0), per_kind),
    ]
    source = candidate.outerjoin(owners, owners.c.user_id == candidate.c.user_id)
    return Startable(source=source, conditions=conditions)


def limits(settings: Settings) -> tuple[int, tuple[tuple[str, int], ...]]:
    """(MAX_RUNNING_PER_USER, MAX_RUNNING_PER_KIND as sorted pairs): what the statements below are built for."""
    per_user = settings.max_running_per_user
    return per_user, tuple(sorted((kind, min(limit, per_user)) for kind, limit in settings.running_per_kind.items()))


#: 'queued' written into the SQL, not bound: the planners use the partial index of queued tasks
#: (`ix_task_queued_user_id_created_at_id`) only for a condition they can see is its own.
_IS_QUEUED: ColumnElement[str] = literal_column(f"'{QUEUED}'")


def _queued(table: Any) -> ColumnElement[bool]:
    """`table`'s row is queued, as the partial index of queued tasks says it (`QUEUED_INDEX_WHERE`).

    An expression of the status, not the status: the (status, enqueued_at) index cannot answer it, so
    a planner whose statistics say few tasks are queued (a generic plan made while the table was
    empty, or statistics taken before a burst) cannot walk every queued task through that index for
    each owner; the partial index, in the owner's order, is the only index left.
    """
    return func.lower(table.c.status) == _IS_QUEUED


def _owners_of_queued() -> Any:
    """The owners of queued tasks, one row each (and a last NULL): a skip scan of the queued tasks' index.

    Each step asks the index for the next owner after the last one, so finding the owners costs
    one index probe per owner, not a read of every queued task (a greedy user's 10,000 queued
    tasks are one probe like another user's one).
    """
    # ORDER BY ... LIMIT 1, not min(): Postgres has no min() of a uuid before version 18. In the partial
    # index's whole order: SQLite, without statistics, walked the (user_id, status) index for `ORDER BY
    # user_id` (covering too), which reads every task of the owners between two with queued tasks.
    first = _TASKS.alias()
    owners = select(
        select(first.c.user_id)
        .where(_queued(first))
        .order_by(first.c.user_id, first.c.created_at, first.c.id)
        .limit(1)
        .scalar_subquery()
        .label("user_id")
    ).cte("queued_owner", recursive=True)
    following = _TASKS.alias()
    after = (
        select(following.c.user_id)
        .where(_queued(following), following.c.user_id > owners.c.user_id)
        .order_by(following.c.user_id, following.c.created_at, following.c.id)
        .limit(1)
        .scalar_subquery()
    )
    return owners.union_all(select(after.label("user_id")).where(owners.c.user_id.is_not(None)))


def _not_passed_over(user_id: ColumnElement[Any], *, postgres: bool) -> ColumnElement[bool]:
    """`user_id` is not among parameter `passed_over` (a list): on Postgres one array parameter, so the
    statement's text is the same whatever the list's length (one prepared statement, app.domain.driver)."""
    if postgres:
        return user_id != all_(bindparam("passed_over", type_=ARRAY(Uuid())))
    return user_id.not_in(bindparam("passed_over", expanding=True))


@lru_cache(maxsize=8)
def claim_statement(per_user: int, per_kind: tuple[tuple[str, int], ...], *, postgres: bool) -> ReturningUpdate[Any]:
    """Mark the fairest task that may start as running; returns a TaskOut's columns, the owner, the first attempt
    and whether the task has a webhook (a task gets its webhook with its submission or never, so the end of an
    attempt of a task without one skips the outbox's statement).

    Parameters: `now` (the claim's time), `due_by` (`due_by(now)`), `worker_id`, and `passed_over` (owners to skip: a
    pick given back because its owner went over a cap). Built once per set of limits and dialect.

    The pick costs what the owners and the running tasks cost, not what the queue holds: the owners of
    queued tasks (a skip scan), those with room under the caps (the running tasks, counted per owner),
    each offering its oldest tasks that may start (a walk of that owner's queued tasks in the index's
    order), and the fairest offer wins. Postgres: each owner offers up to MAX_RUNNING_PER_USER tasks
    (LATERAL), so a claimer that finds the first locked by another claimer (SKIP LOCKED) takes the next;
    and the RETURNING also takes the owner's event locks (two more columns, after the claimed row is
    written), so the count that follows (`over_cap`, read by the claim's event insert) needs no round trip
    of its own to lock first. SQLite has one writer: each owner offers its first task.
    """
    owners = _owners_of_queued()
    by_owner = _running_by_owner(per_kind)
    mine = func.coalesce(by_owner.c.n, 0)
    room = (
        select(
            owners.c.user_id,
            mine.label("n"),
            *(func.coalesce(by_owner.c[f"n{index}"], 0).label(f"n{index}") for index in range(len(per_kind))),
        )
        .select_from(owners.outerjoin(by_owner, by_owner.c.user_id == owners.c.user_id))
        .where(
            owners.c.user_id.is_not(None),
            mine < per_user,
            _not_passed_over(owners.c.user_id, postgres=postgres),
        )
        .subquery("room")
    )
    candidate = _TASKS.alias("candidate")
    offer = (
        select(candidate.c.id)
        .where(
            candidate.c.user_id == room.c.user_id,
            _queued(candidate),
            candidate.c.enqueued_at <= bindparam("due_by", type_=_TASKS.c.enqueued_at.type),
            *_kind_caps(candidate.c.kind, lambda index: room.c[f"n{index}"], per_kind),
        )
        .order_by(candidate.c.created_at, candidate.c.id)
    )
    offered: FromClause
    picked = _TASKS.alias("picked")
    if postgres:
        offered = offer.add_columns(candidate.c.status).limit(per_user).lateral("offer")
        owners_offers: FromClause = room.join(offered, true())
        fewest = room.c.n
        # The offer's own status, not the constant: whatever the statistics say, the planner has no
        # `status = 'queued'` of `picked` to drive a scan of every queued task from (a generic plan made
        # while the table was empty did that, for each owner's offers: 280 s for one claim with 8,000
        # queued). Under FOR UPDATE, the row as another claimer left it is checked again: not queued, passed.
        still_queued = picked.c.status == offered.c.status
    else:
        offered = select(room.c.n, offer.limit(1).scalar_subquery().label("id")).subquery("offer")
        owners_offers = offered
        fewest = offered.c.n
        still_queued = _queued(picked)  # not a status that SQLite would scan the queued tasks for
    pick = (
        select(picked.c.id)
        .select_from(owners_offers.join(picked, picked.c.id == offered.c.id))
        .where(still_queued)
        .order_by(fewest, picked.c.created_at, picked.c.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=picked)  # nothing on SQLite
        .scalar_subquery()
    )
    return (
        update(_TASKS)
        # The pick holds the row's lock (Postgres) or the write lock (SQLite) and saw it queued: no status
        # condition here, which a planner that thinks few tasks are queued would scan every queued task for.
        .where(_TASKS.c.id == pick)
        .values(
            status=RUNNING,
            started_at=bindparam("now", type_=_TASKS.c.started_at.type),
            heartbeat_at=bindparam("now", type_=_TASKS.c.heartbeat_at.type),
            finished_at=None,
            worker_id=bindparam("worker_id", type_=_TASKS.c.worker_id.type),
        )
        .returning(
            *(_TASKS.c[column.key] for column in COLUMNS),
            _TASKS.c.user_id,
            _TASKS.c.first_attempt,
            # The claimed row's id named in full: SQLite's RETURNING names columns bare, and a bare `id` here
            # would be the webhook's own the day task_webhook has one.
            select(_HOOKS.c.task_id)
            .where(_HOOKS.c.task_id == literal_column(f"{_TASKS.name}.id"))
            .exists()
            .label("has_webhook"),
            *(user_lock_expressions(_TASKS.c.user_id) if postgres else ()),
        )
    )


@lru_cache(maxsize=8)
def over_cap(per_user: int, per_kind: tuple[tuple[str, int], ...]) -> ColumnElement[bool]:
    """True when user `user_id` runs more tasks than a cap allows (of all, or of `kind`); parameters: the two."""
    owner = bindparam("user_id", type_=_TASKS.c.user_id.type)
    checks: list[ColumnElement[bool]] = [_running(owner) > per_user]
    for kind, limit in per_kind:
        checks.append(and_(bindparam("kind", type_=_TASKS.c.kind.type) == kind, _running(owner, kind) > limit))
    return or_(*checks)
