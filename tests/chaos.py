"""Fault injection for tests: a private Postgres that can be restarted, a steady load, and what it saw.

`PostgresServer` is a real Postgres cluster of the test's own (initdb into a temporary
folder, its own port), so "restart Postgres" is the real thing (an immediate shutdown,
which is what a crash looks like to clients, then a start with crash recovery) without
touching the machine's shared server. Postgres refuses to run as root; under root the
cluster runs as the `postgres` system account.

`Load` is what users do meanwhile: submitters post demo tasks through the API and
remember every answer; listeners hold the live-event stream open, record every event,
and reconnect with Last-Event-ID whenever their stream drops, like a browser does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.accounts import PASSWORD, new_identity
from tests.processes import ROOT, eventually, send_message
from tests.servers import BIN, free_port, unavailable
from tests.sse import events

POSTGRES_PROGRAMS = ("initdb", "pg_ctl", "postgres", "psql")


def postgres_bin() -> Path | None:
    """The folder of the Postgres server programs (beside `initdb` on PATH, else `pg_config --bindir`), if any."""
    folders = []
    if found := shutil.which("initdb"):
        folders.append(Path(found).resolve().parent)
    if pg_config := shutil.which("pg_config"):
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        folders.append(Path(bindir))
    return next((f for f in folders if all((f / program).exists() for program in POSTGRES_PROGRAMS)), None)


def require_postgres_bin() -> Path:
    """The Postgres server programs' folder; without them the test is skipped, or fails under CI=true."""
    bindir = postgres_bin()
    if bindir is None:
        unavailable("restarting Postgres needs the Postgres server programs (initdb, pg_ctl) to run a private cluster")
    return bindir


@dataclass
class PostgresServer:
    """A throw-away Postgres cluster on its own port, with fsync off (the test's data need not survive a power cut)."""

    bindir: Path
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="app-test-pg-")))

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/app"

    def _run(self, *args: str, timeout: float = 60) -> None:
        prefix: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse root: run them as the `postgres` system account
            shutil.chown(self.root, user="postgres")
            prefix = ["runuser", "-u", "postgres", "--"]
        result = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root)
        assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout}\n{result.stderr}\n{self.log()}"

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def init(self) -> None:
        data = self.root / "data"
        self._run(str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
        self.start()
        self._run(
            str(self.bindir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-c",
            "CREATE DATABASE app",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        data = str(self.root / "data")
        self._run(
            str(self.bindir / "pg_ctl"), "-D", data, "-o", options, "-l", str(self.root / "server.log"), "-w", "start"
        )

    def crash(self) -> None:
        """Stop at once, as a crash would: every client connection breaks; the next start recovers from the WAL."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self.crash()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(bindir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(bindir)
    try:
        server.init()
        yield server
    finally:
        server.remove()


def migrate(database_url: str) -> None:
    """Bring a database to the newest migration through the operators' CLI."""
    result = subprocess.run(
        [str(BIN / "litestar"), "database", "upgrade", "--no-prompt"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass
class User:
    """A signed-in user of the load and everything its clients saw."""

    id: str
    headers: dict[str, str]
    accepted: list[str] = field(default_factory=list)  # ids of tasks answered 202
    unknown: list[str] = field(default_factory=list)  # submissions without an answer (5xx, broken connection)
    refused: list[int] = field(default_factory=list)  # 4xx answers (none expected)
    cancels: list[str] = field(default_factory=list)  # answers to cancel requests (202, 409, 503, "connection")
    listeners: list[Listener] = field(default_factory=list)


@dataclass
class Listener:
    """One live-event client: every (id, event) it received, in order, across its reconnections."""

    received: list[tuple[int, str]] = field(default_factory=list)
    connections: int = 0
    broken: int = 0  # streams that ended in a transport error (the server went away mid-stream)
    refused: list[int] = field(default_factory=list)  # status codes of failed (re)connections

    @property
    def last_id(self) -> int:
        return self.received[-1][0] if self.received else 0


async def sign_up(client: httpx.AsyncClient) -> User:
    identity = new_identity()
    created = await client.post("/api/v1/auth/register", json=identity)
    assert created.status_code == 201, created.text
    tokens = await client.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
    assert tokens.status_code == 200, tokens.text
    return User(id=created.json()["id"], headers={"Authorization": f"Bearer {tokens.json()['access_token']}"})


@dataclass
class Load:
    """Submitters and listeners for `users` users, from `start()` until `stop_submitting()` and `stop_listening()`."""

    url: str
    users: int
    listeners_per_user: int
    submit_every: float  # seconds between one submitter's tasks
    steps: int = 10
    step_ms: int = 50
    people: list[User] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _submitters: list[asyncio.Task[None]] = field(default_factory=list)
    _listening: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=20) as client:
            for _ in range(self.users):
                self.people.append(await sign_up(client))
        for user in self.people:
            for _ in range(self.listeners_per_user):
                listener = Listener()
                user.listeners.append(listener)
                self._listening.append(asyncio.create_task(self._listen(user, listener)))
        # Every listener is connected before the first task exists, so each should see every event of its user.
        await asyncio.to_thread(
            eventually,
            lambda: all(listener.connections for user in self.people for listener in user.listeners),
            timeout=20,
            what="every listener to connect",
        )
        self._submitters = [asyncio.create_task(self._submit(user)) for user in self.people]

    async def stop_submitting(self) -> None:
        self._stopping.set()
        await asyncio.gather(*self._submitters)

    async def stop_listening(self) -> None:
        for task in self._listening:
            task.cancel()
        await asyncio.gather(*self._listening, return_exceptions=True)

    async def _submit(self, user: User) -> None:
        """Post a demo task every `submit_every` seconds (give or take half); after every 5th, cancel the one before."""
        rng = random.Random(user.id)
        async with httpx.AsyncClient(base_url=self.url, timeout=10, headers=user.headers) as client:
            while not self._stopping.is_set():
                body = {"kind": "demo", "params": {"steps": self.steps, "step_ms": self.step_ms}}
                try:
                    response = await client.post("/api/v1/tasks", json=body)
                except httpx.TransportError:
                    user.unknown.append("connection")
                else:
                    if response.status_code == 202:
                        user.accepted.append(response.json()["id"])
                        if len(user.accepted) % 5 == 0:
                            await self._cancel(client, user, user.accepted[-2])
                    elif response.status_code >= 500:
                        user.unknown.append(str(response.status_code))
                    else:
                        user.refused.append(response.status_code)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.submit_every * rng.uniform(0.5, 1.5))

    @staticmethod
    async def _cancel(client: httpx.AsyncClient, user: User, task_id: str) -> None:
        """Cancel a task that may be queued, running or already ended (409)."""
        try:
            response = await client.post(f"/api/v1/tasks/{task_id}/cancel")
        except httpx.TransportError:
            user.cancels.append("connection")
        else:
            user.cancels.append(str(response.status_code))

    async def _listen(self, user: User, listener: Listener) -> None:
        """Hold the stream open; after a drop, reconnect with Last-Event-ID (as EventSource does, after `retry`).

        The client also hangs up by itself now and then (after 5-50 events), as a flaky
        network or a reloaded page does, so that every stream resumes from Last-Event-ID
        many times under load, not only when a fault happens to break it.
        """
        rng = random.Random(id(listener))
        timeout = httpx.Timeout(10, read=None)
        async with httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=user.headers) as client:
            while True:
                headers = {"Last-Event-ID": str(listener.last_id)} if listener.received else {}
                hang_up_after = rng.randint(5, 50)
                try:
                    async with client.stream("GET", "/api/v1/events", headers=headers) as response:
                        if response.status_code != 200:
                            listener.refused.append(response.status_code)
                        else:
                            listener.connections += 1
                            async for event in events(response):
                                listener.received.append((event.id, event.event))
                                hang_up_after -= 1
                                if not hang_up_after:
                                    break
                except httpx.TransportError:
                    listener.broken += 1
                await asyncio.sleep(0.2)


async def send_sweeps(redis_url: str, stop: asyncio.Event, every: float = 1.0) -> None:
    """Play the scheduler: send `tasks.sweep` every `every` seconds (while the broker is down, the send fails)."""
    while not stop.is_set():
        with contextlib.suppress(Exception):
            await asyncio.to_thread(send_message, redis_url, "tasks.sweep")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


@dataclass(frozen=True)
class Facts:
    """What the database holds at the end: tasks, their notifications and every event, per user."""

    tasks: dict[str, dict[str, Any]]  # by task id
    notifications: dict[str, list[dict[str, Any]]]  # by task id
    events: dict[str, list[tuple[int, str, dict[str, Any]]]]  # by user id: (id, type, payload), in id order
    broadcast: list[tuple[int, str]]  # events for everyone


async def read_facts(database_url: str) -> Facts:
    import json

    connection = await asyncpg.connect(database_url)
    try:
        tasks = {
            str(row["id"]): dict(row)
            for row in await connection.fetch("SELECT id, user_id, status, attempts, error, result FROM task")
        }
        notifications: dict[str, list[dict[str, Any]]] = {}
        for row in await connection.fetch("SELECT task_id, title, dedupe_key FROM notification ORDER BY created_at"):
            notifications.setdefault(str(row["task_id"]), []).append(dict(row))
        by_user: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        broadcast: list[tuple[int, str]] = []
        for row in await connection.fetch("SELECT id, user_id, type, payload FROM event ORDER BY id"):
            if row["user_id"] is None:
                broadcast.append((row["id"], row["type"]))
            else:
                payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
                by_user.setdefault(str(row["user_id"]), []).append((row["id"], row["type"], payload))
        return Facts(tasks=tasks, notifications=notifications, events=by_user, broadcast=broadcast)
    finally:
        await connection.close()


# --- recovery in seconds (issue 18): what the workers do by themselves, with no scheduler ------------------------


def query(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(database_url)
        try:
            return [dict(row) for row in await connection.fetch(sql, *args)]
        finally:
            await connection.close()

    return asyncio.run(fetch())


def worker_ids_of(redis_url: str, pids: set[int]) -> set[str]:
    """The heartbeat ids of the worker processes among `pids`."""
    from tests.processes import live_workers

    return {info.id for info in live_workers(redis_url) if info.pid in pids}


def seconds_until_running_again(database_url: str, task_ids: list[str], since: float, timeout: float = 60) -> float:
    """How long after `since` (monotonic) every task in `task_ids` was claimed again (a later attempt, or ended)."""

    def all_back() -> bool:
        rows = query(
            database_url,
            "SELECT count(*) AS n FROM task WHERE id = ANY($1::uuid[]) AND status = 'running' AND worker_id IS NOT NULL"
            " AND error LIKE 'Its worker stopped responding%' OR id = ANY($1::uuid[]) AND status <> ALL($2::text[])",
            task_ids,
            ["running", "queued"],
        )
        return int(rows[0]["n"]) == len(task_ids)

    eventually(all_back, timeout=timeout, what="the dead worker's tasks to run again", interval=0.05)
    return time.monotonic() - since
