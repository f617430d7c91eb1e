"""The query parameters of the task lists (GET /api/v1/tasks and /api/v1/admin/tasks), read into a TaskQuery.

`TASK_QUERY` is the dependency both controllers take: its parameters are documented on each
operation, and what they mean (and refuse) is app.domain.tasks.listing's, as on the pages and
in the CLI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar.di import Provide
from litestar.params import QueryParameter

from app.domain.pagination import MAX_CURSOR
from app.domain.tasks.listing import DEFAULT_SORT, MAX_TEXT, Sort, TaskQuery, task_query
from app.domain.tasks.schemas import TaskStatus

STATUS_HELP = "Only tasks with this status; repeat it for any of several (`?status=failed&status=cancelled`)."
KIND_HELP = "Only tasks of this kind; repeat it, or separate kinds with commas, for any of several."
TEXT_HELP = "Only tasks whose title or description contains this text (any case; `%` and `_` are plain characters)."


async def provide_task_query(
    status: Annotated[
        list[TaskStatus] | None,
        QueryParameter(
            description="Only tasks with this status; repeat it for any of several (`?status=failed&status=cancelled`)."
        ),
    ] = None,
    kind: Annotated[
        list[str] | None,
        QueryParameter(
            description="Only tasks of this kind; repeat it, or separate kinds with commas, for any of several."
        ),
    ] = None,
    q: Annotated[
        str | None,
        QueryParameter(
            max_length=MAX_TEXT,
            description=TEXT_HELP,
        ),
    ] = None,
    created_after: Annotated[
        datetime | None,
        QueryParameter(description="Only tasks created at or after this moment (ISO 8601; without an offset: UTC)."),
    ] = None,
    created_before: Annotated[
        datetime | None,
        QueryParameter(description="Only tasks created before this moment (ISO 8601; without an offset: UTC)."),
    ] = None,
    sort: Annotated[
        Sort,
        QueryParameter(
            description=(
                "The order: `-created_at` newest first, `created_at` oldest first, `-finished_at` / `finished_at` by "
                "when they ended (unfinished tasks last); ties by id."
            )
        ),
    ] = DEFAULT_SORT,
    cursor: Annotated[
        str | None,
        QueryParameter(
            max_length=MAX_CURSOR,
            description=(
                "Continue after the page that gave this `next_cursor`, with the same filters and sort "
                "(not together with `offset`)."
            ),
        ),
    ] = None,
) -> TaskQuery:
    return task_query(
        statuses=status or (),
        kinds=kind or (),
        text=q,
        created_after=created_after,
        created_before=created_before,
        sort=sort,
        cursor=cursor,
    )


TASK_QUERY = Provide(provide_task_query)
