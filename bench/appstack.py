"""What the benchmarks of the real app share: a database, a redis-server and settings of their own.

Every benchmark that runs the service isolates itself: a Postgres database created for it
(migrated with `litestar database upgrade`, dropped at the end), a throw-away redis-server
on a free port, its own SECRET_KEY, REDIS_NAMESPACE and VAR_DIR. Rows are seeded with
asyncpg directly (COPY), not through the API. Processes are started the way the tests
start them (`tests.servers.spawn`: their own session, output in a log file).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from tests.processes import RedisServer
from tests.servers import BIN, Process, free_port, spawn

ROOT = Path(__file__).resolve().parents[1]
ADMIN_DATABASE_URL = os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PASSWORD = "correct horse battery"
READY_TIMEOUT_S = 120.0


def _admin_sql(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(ADMIN_DATABASE_URL)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


@contextlib.contextmanager
def database(prefix: str) -> Iterator[str]:
    """A new empty Postgres database, dropped at the end; yields its URL."""
    name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
    _admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_DATABASE_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """`litestar ARGS...` from the repository root with `env`; its output, or RuntimeError."""
    result = subprocess.run(
        [str(BIN / "litestar"), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"litestar {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


@dataclass(frozen=True)
class Services:
    """The settings of one benchmark's service (services mode): pass `env` to every process."""

    env: dict[str, str]
    database_url: str
    redis_url: str


@contextlib.contextmanager
def services(prefix: str, settings: dict[str, str] | None = None) -> Iterator[Services]:
    """Its own database (migrated), redis-server, secret, namespace and var/ folder, for one benchmark."""
    var_dir = tempfile.mkdtemp(prefix=f"bench-{prefix}-var-")
    redis_server = RedisServer()
    redis_server.start()
    try:
        with database(prefix) as database_url:
            env = {
                "LITESTAR_APP": "app.web.app:create_app",
                "APP_ENV": "production",
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_server.url,
                "BROKER_URL": "",
                "REDIS_NAMESPACE": f"bench-{prefix}-{uuid.uuid4().hex[:6]}",
                "SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
                "VAR_DIR": var_dir,
                "LOG_LEVEL": "WARNING",
                "SMTP_HOST": "",
                **(settings or {}),
            }
            run_cli(env, "database", "upgrade", "--no-prompt")
            yield Services(env=env, database_url=database_url, redis_url=redis_server.url)
    finally:
        redis_server.stop()
        shutil.rmtree(var_dir, ignore_errors=True)


def wait_live(url: str, process: Process, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{process.output()[-4000:]}")
        try:
            if httpx.get(url + "/health/live", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} did not answer within {timeout:.0f} s:\n{process.output()[-4000:]}")


def start_web(env: dict[str, str], name: str = "web") -> tuple[Process, str]:
    """One web process of the real app (granian via `litestar run`, one worker); (process, base URL)."""
    port = free_port()
    args = [str(BIN / "litestar"), "run", "--host", "127.0.0.1", "--port", str(port)]
    process = spawn(name, args, ROOT, env)
    url = f"http://127.0.0.1:{port}"
    wait_live(url, process)
    return process, url


def stop(process: Process) -> None:
    process.stop()
    with contextlib.suppress(OSError):
        process.log.unlink()


# --- seeding ---------------------------------------------------------------------------------


def password_hash(password: str = PASSWORD) -> str:
    """An argon2id hash with the service's default settings (what a real sign-up stores)."""
    from argon2 import PasswordHasher, Type

    from app.config.settings import Settings

    defaults = Settings()
    hasher = PasswordHasher(
        time_cost=defaults.argon2_time_cost,
        memory_cost=defaults.argon2_memory_kib,
        parallelism=defaults.argon2_parallelism,
        type=Type.ID,
    )
    return hasher.hash(password)


USER_COLUMNS = (
    "id",
    "email",
    "username",
    "full_name",
    "password_hash",
    "is_active",
    "is_verified",
    "is_superuser",
    "email_notifications",
    "credentials_version",
    "created_at",
    "updated_at",
)
TASK_COLUMNS = (
    "id",
    "user_id",
    "kind",
    "title",
    "description",
    "status",
    "params",
    "result",
    "error",
    "attempts",
    "progress_current",
    "progress_total",
    "progress_message",
    "cancel_requested",
    "created_at",
    "enqueued_at",
    "started_at",
    "heartbeat_at",
    "finished_at",
)


def uuid7(at: datetime) -> uuid.UUID:
    """A UUIDv7 for the given time (the service's ids are UUIDv7, ordered by time)."""
    millis = int(at.timestamp() * 1000)
    value = (millis << 80) | (0x7 << 76) | (uuid.uuid4().int & ((1 << 76) - 1))
    value = (value & ~(0b11 << 62)) | (0b10 << 62)
    return uuid.UUID(int=value)


def seed(database_url: str, usernames: Sequence[str], tasks_per_user: int) -> list[uuid.UUID]:
    """Users (password PASSWORD, one hash for all) with `tasks_per_user` succeeded demo tasks each; their ids."""
    import asyncpg

    hashed = password_hash()
    now = datetime.now(UTC)
    users = [
        (uuid7(now), f"{name}@example.com", name, None, hashed, True, True, False, False, 1, now, now)
        for name in usernames
    ]

    def task_rows(user_id: uuid.UUID) -> Iterator[tuple[object, ...]]:
        for number in range(tasks_per_user):
            created = now - timedelta(seconds=tasks_per_user - number)
            yield (
                uuid7(created),
                user_id,
                "demo",
                f"Demo task {number}",
                None,
                "succeeded",
                '{"steps": 100, "step_ms": 100}',
                '{"steps": 100}',
                None,
                1,
                100,
                100,
                "Processing step 100 of 100",
                False,
                created,
                created,
                created + timedelta(milliseconds=5),
                created + timedelta(seconds=10),
                created + timedelta(seconds=10),
            )

    async def run() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await connection.copy_records_to_table("user_account", records=users, columns=USER_COLUMNS)
            for user in users:
                await connection.copy_records_to_table("task", records=task_rows(user[0]), columns=TASK_COLUMNS)
            await connection.execute("VACUUM ANALYZE")
        finally:
            await connection.close()

    asyncio.run(run())
    return [user[0] for user in users]


def login(url: str, username: str) -> str:
    """An access token for `username`, through the API."""
    response = httpx.post(url + "/api/v1/auth/login", json={"username": username, "password": PASSWORD}, timeout=30)
    response.raise_for_status()
    return str(response.json()["access_token"])


# --- processes -------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pending.extend(int(child) for child in children.read_text().split())
    return found


def rss_kib(pid: int) -> int:
    """VmRSS of one process, in KiB (0 when it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree_rss_kib(pid: int) -> tuple[int, int]:
    """(summed VmRSS in KiB, number of processes) over `pid`'s process tree."""
    pids = process_tree(pid)
    return sum(rss_kib(p) for p in pids), len(pids)


def free_local_port() -> int:
    return free_port()
