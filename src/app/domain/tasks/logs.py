"""What a task writes as it runs: its log lines, buffered, capped, kept with the task, read back in pages.

A kind calls `context.log(message, level)`; the attempt's `LogBuffer` holds the line and the
runner writes what waits with its next write of the task row (the batched progress write,
or the attempt's end or requeue), in that transaction: one multi-row INSERT and one
`task.log` event per write, however many lines, never a transaction per line. A buffer
of FLUSH_LINES lines (or FLUSH_CHARS characters) is written at once, so a greedy kind
holds little in memory.

Lines are numbered per task from 1 (`seq`) across all its attempts. A later attempt
(retried, requeued, or handed back after its worker died) learns where to go on at its
first write of lines, from the table, inside a transaction that already holds the task's
row (the write's UPDATE with the attempt's condition): an attempt that was handed back
cannot write any more, so the attempt that runs now is the only writer, and it goes on
after the last stored line. Attempt 1 skips that read: every way back to `queued` (retry,
requeue, hand-back) raises `attempts`, so attempt 1 runs once and finds no line before
its own. The primary key (task_id, seq) refuses a duplicate anyway.

Caps against greedy tasks: a line is at most MAX_LINE_CHARS characters (cut, with
LINE_CUT at its end); NUL and other control characters are removed (Postgres refuses NUL
in text) and lone surrogates replaced; a task keeps MAX_LINES lines, then one
TRUNCATED_LOG line, and drops the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast, get_args
from uuid import UUID

import msgspec
from sqlalchemy import Integer, Table, and_, bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.domain.clock import utcnow
from app.domain.database import read
from app.domain.driver import Executor
from app.domain.errors import NotFound
from app.domain.tasks.models import Task, TaskLog

#: The live event of lines written: `{task_id, lines: [TaskLogLine, ...]}`, one per write.
TASK_LOG = "task.log"

LogLevel = Literal["debug", "info", "warning", "error"]
LEVELS: tuple[str, ...] = get_args(LogLevel)
#: Characters a line keeps; a longer one is cut and ends with LINE_CUT (within this length).
MAX_LINE_CHARS = 2_000
LINE_CUT = " … [line truncated]"
#: Lines a task keeps over all its attempts; the next one is TRUNCATED_LOG and the rest are dropped.
MAX_LINES = 10_000
TRUNCATED_LOG = f"Log truncated: a task keeps at most {MAX_LINES:,} lines; later lines were dropped."
#: A buffer this full is written at once, without waiting for the progress interval.
FLUSH_LINES = 100
FLUSH_CHARS = 64 * 1024
#: `GET /api/v1/tasks/{id}/logs?limit=`: default and largest.
DEFAULT_PAGE = 100
MAX_PAGE = 1_000
#: The largest `?after=` (seq is a 32-bit integer in every database here).
MAX_SEQ = 2**31 - 1

#: C0 and C1 control characters and DEL; tabs and line breaks become spaces, the rest go.
_SPACES = re.compile(r"[\t\n\r\v\f]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class TaskLogLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a task's output: `seq` counts from 1 per task, over all its attempts."""

    seq: int
    level: LogLevel
    message: str
    created_at: datetime
    attempt: int


class TaskLogPage(msgspec.Struct, frozen=True, kw_only=True):
    """Lines after `?after=`, oldest first; ask again with `after=next_after` for the next ones."""

    items: list[TaskLogLine]
    next_after: int


def clean(message: str) -> str:
    """`message` as a line may hold it: one line, no control characters, valid UTF-8, at most MAX_LINE_CHARS."""
    head = message[: 2 * MAX_LINE_CHARS]  # enough to fill a line after removals; the rest is cut anyway
    text = _CONTROLS.sub("", _SPACES.sub(" ", head))
    text = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate becomes "?"
    if len(text) > MAX_LINE_CHARS or len(message) > len(head):
        text = text[: MAX_LINE_CHARS - len(LINE_CUT)] + LINE_CUT
    return text


_LOGS = cast(Table, TaskLog.__table__)
_TASKS = cast(Table, Task.__table__)
#: Where an attempt's first write of lines goes on. Parameter: task_id.
_LAST_SEQ = select(func.coalesce(func.max(_LOGS.c.seq), 0)).where(
    _LOGS.c.task_id == bindparam("task_id", type_=_LOGS.c.task_id.type)
)
_INSERT = insert(_LOGS)


@dataclass(frozen=True)
class Staged:
    """Lines inserted by a transaction not yet committed: `LogBuffer.written` forgets them once it is."""

    taken: int
    next_seq: int
    lines: list[TaskLogLine]

    def event(self, task_id: UUID) -> tuple[str, dict[str, Any]]:
        """The `task.log` event of these lines."""
        return TASK_LOG, {"task_id": str(task_id), "lines": msgspec.to_builtins(self.lines)}


@dataclass
class LogBuffer:
    """The lines of one attempt not written yet, and where its next line goes (once known)."""

    task_id: UUID
    attempt: int
    _waiting: list[tuple[LogLevel, str, datetime]] = field(default_factory=list)
    _chars: int = 0
    #: The next line's seq: None until a later attempt's first write reads it from the table (see above).
    _next_seq: int | None = None

    def __post_init__(self) -> None:
        if self.attempt == 1:
            self._next_seq = 1

    def add(self, message: str, level: LogLevel = "info") -> None:
        """Hold a line for the next write; dropped once the task's log is full. ValueError for an unknown level."""
        if level not in LEVELS:
            raise ValueError(f"Unknown log level {level!r}: one of {', '.join(LEVELS)}")
        if self._next_seq is not None and self._next_seq + len(self._waiting) > MAX_LINES + 1:
            return  # the log is full and its TRUNCATED_LOG line is written or waiting
        line = clean(str(message))
        self._waiting.append((level, line, utcnow()))
        self._chars += len(line)

    @property
    def waiting(self) -> bool:
        return bool(self._waiting)

    @property
    def full(self) -> bool:
        """Enough waits to be written now rather than with the next progress write."""
        return len(self._waiting) >= FLUSH_LINES or self._chars >= FLUSH_CHARS

    async def stage(self, session: Executor) -> Staged | None:
        """Insert the waiting lines in the caller's transaction, which must hold the task's row (see above).

        None when no line waits. The lines stay in the buffer until `written` (after commit):
        a transaction that fails leaves them for the next write.
        """
        if not self._waiting:
            return None
        taken = list(self._waiting)
        seq = self._next_seq
        if seq is None:
            seq = int(await session.scalar(_LAST_SEQ, {"task_id": self.task_id}) or 0) + 1
        lines: list[TaskLogLine] = []
        for level, message, created_at in taken:
            if seq > MAX_LINES + 1:
                break
            if seq == MAX_LINES + 1:
                level, message = "warning", TRUNCATED_LOG
            lines.append(
                TaskLogLine(seq=seq, level=level, message=message, created_at=created_at, attempt=self.attempt)
            )
            seq += 1
        if lines:
            rows = [{"task_id": self.task_id, **msgspec.structs.asdict(line)} for line in lines]
            await session.execute(_INSERT, rows)
        return Staged(taken=len(taken), next_seq=seq, lines=lines)

    def written(self, staged: Staged | None) -> None:
        """The transaction that staged these lines committed: forget them, and go on after them."""
        if staged is None:
            return
        done, self._waiting = self._waiting[: staged.taken], self._waiting[staged.taken :]
        self._chars -= sum(len(message) for _, message, _ in done)
        self._next_seq = staged.next_seq


_LINE_COLUMNS = (_LOGS.c.seq, _LOGS.c.level, _LOGS.c.message, _LOGS.c.created_at, _LOGS.c.attempt)


def _line(row: Any) -> TaskLogLine:
    seq, level, message, created_at, attempt = row
    return TaskLogLine(seq=seq, level=level, message=message, created_at=created_at, attempt=attempt)


#: The owner's page: the task (so that no row means "not yours"), left-joined with its lines after `after`.
#: Parameters: task_id, user_id, after, limit.
_PAGE = (
    select(_TASKS.c.id, *_LINE_COLUMNS)
    .select_from(
        _TASKS.outerjoin(_LOGS, and_(_LOGS.c.task_id == _TASKS.c.id, _LOGS.c.seq > bindparam("after", type_=Integer)))
    )
    .where(_TASKS.c.id == bindparam("task_id", type_=_TASKS.c.id.type), _TASKS.c.user_id == bindparam("user_id"))
    .order_by(_LOGS.c.seq)
    .limit(bindparam("limit", type_=Integer))
)
#: The newest lines of one task, newest first. Parameters: task_id, limit.
_NEWEST = (
    select(*_LINE_COLUMNS)
    .where(_LOGS.c.task_id == bindparam("task_id", type_=_LOGS.c.task_id.type))
    .order_by(_LOGS.c.seq.desc())
    .limit(bindparam("limit", type_=Integer))
)
#: Lines of one task after a seq, oldest first, whoever owns it (operators). Parameters: task_id, after, limit.
_AFTER = (
    select(*_LINE_COLUMNS)
    .where(
        _LOGS.c.task_id == bindparam("task_id", type_=_LOGS.c.task_id.type),
        _LOGS.c.seq > bindparam("after", type_=Integer),
    )
    .order_by(_LOGS.c.seq)
    .limit(bindparam("limit", type_=Integer))
)


async def log_page(engine: AsyncEngine, user_id: UUID, task_id: UUID, *, after: int, limit: int) -> TaskLogPage:
    """The user's task's lines after `after`, oldest first, in one round trip; NotFound for another's task."""
    rows = await read(engine, _PAGE, {"task_id": task_id, "user_id": user_id, "after": after, "limit": limit})
    if not rows:
        raise NotFound("No such task.")
    items = [_line(row[1:]) for row in rows if row[1] is not None]
    return TaskLogPage(items=items, next_after=items[-1].seq if items else after)


async def newest_lines(engine: AsyncEngine, task_id: UUID, limit: int) -> list[TaskLogLine]:
    """The last `limit` lines of a task, oldest first (the caller has checked the task is the user's)."""
    rows = await read(engine, _NEWEST, {"task_id": task_id, "limit": limit})
    return [_line(row) for row in reversed(rows)]


async def lines_after(session: AsyncSession, task_id: UUID, after: int, limit: int = MAX_PAGE) -> list[TaskLogLine]:
    """Lines of any task after `after`, oldest first: what an operator's command reads."""
    rows = await session.execute(_AFTER, {"task_id": task_id, "after": after, "limit": limit})
    return [_line(row) for row in rows]
