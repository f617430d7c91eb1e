"""`export`: the user's own tasks or notifications as a CSV or JSON file, streamed in batches.

A CSV cell that a spreadsheet would run as a formula (text starting with `=`, `+`, `-`,
`@`, a tab or a carriage return, OWASP's list) gets a leading `'`, so an exported title
like `=HYPERLINK(...)` is shown as text. JSON is written as stored.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from sqlalchemy import func, literal, select, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from app.domain.clock import utcnow
from app.domain.notifications.models import Notification
from app.domain.tasks.kinds.base import Kind, TaskContext
from app.domain.tasks.models import Task

BATCH = 500
COLUMNS: dict[str, Sequence[InstrumentedAttribute[Any]]] = {
    "tasks": (
        Task.id, Task.kind, Task.title, Task.status, Task.attempts, Task.error,
        Task.created_at, Task.started_at, Task.finished_at,
    ),
    "notifications": (
        Notification.id, Notification.category, Notification.title, Notification.message,
        Notification.is_read, Notification.task_id, Notification.created_at, Notification.read_at,
    ),
}  # fmt: skip
MODELS: dict[str, type[Task] | type[Notification]] = {"tasks": Task, "notifications": Notification}


class ExportParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dataset: Annotated[Literal["tasks", "notifications"], msgspec.Meta(title="Data", description="What to export")]
    format: Annotated[Literal["csv", "json"], msgspec.Meta(title="Format", description="The file's format")] = "csv"


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """`value`, with a leading `'` when it is text a spreadsheet would take for a formula."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


async def _batches(context: TaskContext, dataset: str) -> AsyncIterator[list[dict[str, Any]]]:
    """The user's rows in creation order, BATCH at a time (keyset pagination: no OFFSET scans)."""
    model, columns = MODELS[dataset], COLUMNS[dataset]
    after: tuple[datetime, Any] | None = None
    while True:
        query = select(*columns).where(model.user_id == context.user_id)
        if after is not None:
            query = query.where(
                tuple_(model.created_at, model.id)
                > tuple_(literal(after[0], model.created_at.type), literal(after[1], model.id.type))
            )
        query = query.order_by(model.created_at, model.id).limit(BATCH)
        async with context.session() as session:
            rows = (await session.execute(query)).all()
        if not rows:
            return
        yield [{column.key: _cell(value) for column, value in zip(columns, row, strict=True)} for row in rows]
        last = rows[-1]
        after = (last.created_at, last.id)


async def _count(context: TaskContext, dataset: str) -> int:
    model = MODELS[dataset]
    async with context.session() as session:
        return int(await session.scalar(select(func.count()).where(model.user_id == context.user_id)) or 0)


def _encode(rows: list[dict[str, Any]], fmt: str, *, first: bool, header: list[str]) -> bytes:
    if fmt == "json":
        body = b",\n".join(msgspec.json.encode(row) for row in rows)
        return (b"[\n" if first else b",\n") + body
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\r\n")
    if first:
        writer.writeheader()
    writer.writerows({key: csv_safe(value) for key, value in row.items()} for row in rows)
    return buffer.getvalue().encode()


async def run(params: ExportParams, context: TaskContext) -> dict[str, Any]:
    total = await _count(context, params.dataset)
    header = [column.key for column in COLUMNS[params.dataset]]
    filename = f"{params.dataset}-{utcnow():%Y%m%d-%H%M%S}.{params.format}"
    digest, size, rows = hashlib.sha256(), 0, 0
    await context.log(f"Exporting {total} {params.dataset} as {params.format.upper()} to {filename}")
    await context.progress(0, total, f"Exporting {total} {params.dataset}")
    async with context.artifact(filename) as sink:

        async def put(chunk: bytes) -> None:
            nonlocal size
            digest.update(chunk)
            size += len(chunk)
            await sink.write(chunk)

        async for batch in _batches(context, params.dataset):
            await put(_encode(batch, params.format, first=rows == 0, header=header))
            rows += len(batch)
            await context.log(f"Wrote rows {rows - len(batch) + 1}-{rows}")
            await context.progress(rows, max(total, rows), f"Exported {rows} of {max(total, rows)} rows")
        if params.format == "json":
            await put(b"[]\n" if rows == 0 else b"\n]\n")
        elif rows == 0:
            await put(_encode([], "csv", first=True, header=header))
    await context.log(f"Wrote {rows} rows, {size} bytes (sha256 {digest.hexdigest()})")
    return {"rows": rows, "bytes": size, "sha256": digest.hexdigest(), "filename": filename}


KIND = Kind(
    name="export",
    title="Export my data",
    description="Writes your own tasks or notifications to a CSV or JSON file you can download.",
    params=ExportParams,
    run=run,
    time_limit_seconds=15 * 60,
)
