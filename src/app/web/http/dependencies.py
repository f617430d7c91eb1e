"""Dependency resolution without a task per dependency.

Litestar resolves each batch of two or more independent dependencies in an anyio task group, one task
per dependency (`KwargsModel.resolve_dependencies`), even when the dependency is a plain function that
returns at once: every app-level constant (`settings`, `sessions`, `reads`, `channels`, ...) a handler
takes costs a task, a cancel scope and their bookkeeping on every request. py-spy put that at about a
tenth of the web process's CPU on `POST /api/v1/tasks` (six constants). Upstream:
https://github.com/litestar-org/litestar/issues/4563 (open).

`install()` replaces that one method with one that resolves the synchronous providers of a batch in the
request's own task, in order (run in tasks they would block the loop all the same, so nothing ran
concurrently before either), and still gives the batch's coroutine providers a task group when there are
two or more of them. Same values, same cleanup of generator dependencies, same first error raised.
`tests/test_dependencies.py` checks it against the Litestar in uv.lock.
"""

from __future__ import annotations

from typing import Any

from anyio import create_task_group
from litestar._kwargs.cleanup import DependencyCleanupGroup
from litestar._kwargs.dependencies import DependencyContainer, resolve_dependency
from litestar._kwargs.kwargs_model import KwargsModel
from litestar.connection import ASGIConnection
from litestar.types import Empty

__all__ = ["install"]


def _runs_inline(dependency: DependencyContainer) -> bool:
    """A provider that never waits: a plain function or a sync generator, or a value already cached.

    (Litestar counts an async generator function as a plain one: it is not, it goes to the task group.)"""
    provide = dependency.provide
    if provide.use_cache and provide.value is not Empty:
        return True
    return bool(provide.has_sync_callable) and not provide.has_async_generator_dependency


async def _resolve_dependencies(
    self: KwargsModel, connection: ASGIConnection[Any, Any, Any, Any], kwargs: dict[str, Any]
) -> DependencyCleanupGroup:
    cleanup_group = DependencyCleanupGroup()
    for batch in self.dependency_batches:
        waiting: list[DependencyContainer] = []
        for dependency in batch:
            if _runs_inline(dependency):
                await resolve_dependency(dependency, connection, kwargs, cleanup_group)
            else:
                waiting.append(dependency)
        if len(waiting) == 1:
            await resolve_dependency(waiting[0], connection, kwargs, cleanup_group)
        elif waiting:
            try:
                async with create_task_group() as task_group:
                    for dependency in waiting:
                        task_group.start_soon(resolve_dependency, dependency, connection, kwargs, cleanup_group)
            except ExceptionGroup as group:
                raise group.exceptions[0] from group
    return cleanup_group


def install() -> None:
    """Make every Litestar app in this process resolve dependencies as above (idempotent)."""
    KwargsModel.resolve_dependencies = _resolve_dependencies  # type: ignore[method-assign]
