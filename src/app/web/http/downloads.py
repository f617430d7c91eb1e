"""A task's result as both doors answer it: its file as an attachment, or its result JSON."""

from __future__ import annotations

from typing import Any

from litestar import Response
from litestar.exceptions import NotFoundException
from litestar.response import File

from app.domain.tasks.artifacts import ArtifactStore
from app.domain.tasks.models import Task


def task_result(
    task: Task, artifacts: ArtifactStore, *, json_filename: str | None = None
) -> File | Response[dict[str, Any]]:
    """The task's file (an export's), else its result JSON (an attachment named `json_filename` if given); 404
    while there is neither."""
    if task.artifact and (path := artifacts.path(task.artifact)) is not None:
        return File(path, filename=path.name, content_disposition_type="attachment")
    if task.result is not None:
        headers = {"Content-Disposition": f'attachment; filename="{json_filename}"'} if json_filename else None
        return Response(task.result, headers=headers)
    raise NotFoundException(detail="This task has no result yet.")
