"""Dependency resolution (app.web.http.dependencies): no task per dependency, the rest as Litestar does it.

Plain Litestar apps, so that each rule is seen alone; the service's own routes go through it in
every other test. The module runs once, in the embedded run of `make test` (no server is used).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar import Litestar, get
from litestar._kwargs.kwargs_model import KwargsModel
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotAuthorizedException
from litestar.params import FromQuery
from litestar.testing import TestClient

from app.web.http import dependencies

pytestmark = pytest.mark.embedded


@pytest.fixture(autouse=True)
def installed() -> None:
    dependencies.install()


def constant(value: Any) -> Provide:
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


def test_plain_dependencies_are_resolved_in_the_requests_own_task() -> None:
    """Several constants and a plain function (one batch) cost no task: each runs in the handler's task.
    Litestar alone gives each of them a task of an anyio task group."""
    tasks: dict[str, asyncio.Task[Any] | None] = {}

    def where(name: str) -> Provide:
        def provide() -> str:
            tasks[name] = asyncio.current_task()
            return name

        return Provide(provide, sync_to_thread=False)

    @get("/")
    async def handler(
        first: NamedDependency[str],
        second: NamedDependency[str],
        settings: NamedDependency[int],
        other: NamedDependency[int],
    ) -> dict[str, Any]:
        tasks["handler"] = asyncio.current_task()
        return {"values": [first, second, settings, other]}

    app = Litestar(
        [handler],
        dependencies={
            "first": where("first"),
            "second": where("second"),
            "settings": constant(1),
            "other": constant(2),
        },
    )
    with TestClient(app) as client:
        assert client.get("/").json() == {"values": ["first", "second", 1, 2]}
    assert tasks["handler"] is not None
    assert tasks["first"] is tasks["handler"]
    assert tasks["second"] is tasks["handler"]


def test_coroutine_dependencies_still_run_concurrently() -> None:
    """Two coroutine providers of one batch that each wait for the other: resolved one after the other,
    both would time out."""
    a_started, b_started = asyncio.Event(), asyncio.Event()

    async def provide_a() -> str:
        a_started.set()
        await asyncio.wait_for(b_started.wait(), 5)
        return "a"

    async def provide_b() -> str:
        b_started.set()
        await asyncio.wait_for(a_started.wait(), 5)
        return "b"

    @get("/")
    async def handler(a: NamedDependency[str], b: NamedDependency[str], c: NamedDependency[int]) -> list[Any]:
        return [a, b, c]

    app = Litestar([handler], dependencies={"a": Provide(provide_a), "b": Provide(provide_b), "c": constant(3)})
    with TestClient(app) as client:
        answer = client.get("/")
    assert answer.status_code == 200, answer.text
    assert answer.json() == ["a", "b", 3]


def test_a_dependencys_error_is_the_answer_and_generator_dependencies_are_cleaned_up() -> None:
    cleaned: list[str] = []

    def provide_resource() -> Iterator[str]:
        yield "resource"
        cleaned.append("sync")

    async def provide_async_resource() -> AsyncIterator[str]:
        yield "async resource"
        cleaned.append("async")

    def refuse(flag: FromQuery[bool] = False) -> bool:
        if flag:
            raise NotAuthorizedException("no")
        return flag

    @get("/", sync_to_thread=False)
    def handler(
        resource: NamedDependency[str],
        async_resource: NamedDependency[str],
        refused: NamedDependency[bool],
        settings: NamedDependency[object],
    ) -> list[Any]:
        return [resource, async_resource, refused]

    app = Litestar(
        [handler],
        dependencies={
            "resource": Provide(provide_resource),
            "async_resource": Provide(provide_async_resource),
            "refused": Provide(refuse, sync_to_thread=False),
            "settings": constant(object()),
        },
    )
    with TestClient(app) as client:
        assert client.get("/").json() == ["resource", "async resource", False]
        assert sorted(cleaned) == ["async", "sync"]
        refused = client.get("/", params={"flag": "true"})
    assert refused.status_code == 401
    assert refused.json()["detail"] == "no"


def test_the_service_resolves_dependencies_this_way(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.web.app import create_app

    async def another(self: KwargsModel, connection: object, kwargs: dict[str, Any]) -> None:
        raise AssertionError("not the service's")

    monkeypatch.setattr(KwargsModel, "resolve_dependencies", another)  # put back after the test
    create_app()
    assert KwargsModel.resolve_dependencies is dependencies._resolve_dependencies
