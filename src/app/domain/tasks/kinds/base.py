"""What a kind of task is, and what it may use while it runs.

A kind is one module under `app.domain.tasks.kinds` that declares a `Kind`: its name,
title, description, a msgspec Struct for its parameters (whose JSON schema the API
shows), a time limit, and an async `run(params, context)` returning the result. A kind
knows nothing of Dramatiq or Litestar: the context is all it gets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.tasks.logs import LogLevel

P = TypeVar("P", bound=msgspec.Struct)


class TaskCancelled(Exception):
    """Raised into a kind when its user asked to cancel it; the runner records the cancellation."""


class ArtifactSink(Protocol):
    """A file being written for a task; it becomes the task's artifact when the block ends without error."""

    async def write(self, data: bytes) -> None: ...


class TaskContext(Protocol):
    task_id: UUID
    user_id: UUID

    async def progress(self, current: int, total: int, message: str | None = None) -> None:
        """Report progress (stored at most ~10 times a second); raises TaskCancelled after a cancel request."""
        ...

    async def log(self, message: str, level: LogLevel = "info") -> None:
        """Add a line to the task's output (written with the next progress write; see app.domain.tasks.logs)."""
        ...

    def session(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A database session for reading what the task needs (the user's own rows)."""
        ...

    def artifact(self, filename: str) -> AbstractAsyncContextManager[ArtifactSink]:
        """Write the task's downloadable file."""
        ...


@dataclass(frozen=True)
class Kind(Generic[P]):
    name: str
    title: str
    description: str
    params: type[P]
    run: Callable[[P, TaskContext], Awaitable[dict[str, Any]]]
    time_limit_seconds: int = 3600

    def parse(self, raw: dict[str, Any]) -> P:
        """The parameters as the kind's Struct; msgspec.ValidationError names the bad field."""
        return msgspec.convert(raw, self.params, strict=True)

    def params_schema(self) -> dict[str, Any]:
        return msgspec.json.schema(self.params)
