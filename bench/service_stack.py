"""A private copy of the service for a benchmark: its own database, redis-server, settings and processes.

`service_stack()` creates a Postgres database (migrated with `litestar database upgrade`,
dropped at the end), starts a throw-away redis-server on a free port and builds the
environment of every process: its own SECRET_KEY, REDIS_NAMESPACE and VAR_DIR. The
benchmark then seeds rows if it needs them (`seed`, with asyncpg's COPY, not through the
API) and starts what it measures on the stack: a web process (`litestar run`, granian),
a worker (`dramatiq app.workers`). Processes are started the way the tests start them
(`tests.servers.spawn`: their own session, output in a log file) and stopped at the end.

`RawHttp` is a minimal HTTP/1.1 keep-alive client on asyncio streams: it costs the
benchmark process far less CPU per request than a full client, so the service, not the
client, is measured. `process_tree` and `rss_kib` read a process tree's memory from /proc.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
from tests.processes import RedisServer
from tests.servers import BIN, LiveServer, Process, free_port, spawn, wait_ready

ROOT = Path(__file__).resolve().parents[1]
ADMIN_DATABASE_URL = os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PASSWORD = "bench horse battery staple"
READY_TIMEOUT_S = 120.0

#: Cheap hashing and no registration limit, for benchmarks whose set-up signs users up
#: through the API and which do not measure hashing.
FAST_SIGN_UP = {
    "ARGON2_TIME_COST": "1",
    "ARGON2_MEMORY_KIB": "8192",
    "ARGON2_PARALLELISM": "1",
    "REGISTRATIONS_PER_HOUR": "100000",
}

# --- database, redis-server, settings --------------------------------------------------------


def _admin_sql(sql: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(ADMIN_DATABASE_URL, timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


@contextlib.contextmanager
def database(name: str) -> Iterator[str]:
    """A new empty Postgres database called `name`, dropped at the end; yields its URL."""
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


def environment(name: str, database_url: str, redis_url: str, var_dir: str, settings: dict[str, str]) -> dict[str, str]:
    """The settings of every process of one stack (services mode), with extra `settings` last."""
    return {
        "LITESTAR_APP": "app.web.app:create_app",
        "APP_ENV": "production",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BROKER_URL": "",
        "REDIS_NAMESPACE": name,
        "SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
        "VAR_DIR": var_dir,
        "LOG_LEVEL": "WARNING",
        "SMTP_HOST": "",
        **settings,
    }


def wait_live(url: str, process: Process, timeout: float = READY_TIMEOUT_S) -> None:
    """Until `url`/health/live answers 200; RuntimeError if `process` exits first."""
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


def stop(process: Process) -> None:
    """Stop a process and remove its log file."""
    process.stop()
    with contextlib.suppress(OSError):
        process.log.unlink()


def login(url: str, username: str) -> str:
    """An access token for `username` (password PASSWORD), through the API."""
    response = httpx.post(url + "/api/v1/auth/login", json={"username": username, "password": PASSWORD}, timeout=30)
    response.raise_for_status()
    return str(response.json()["access_token"])


class ServiceStack:
    """One benchmark's copy of the service: its settings, and the processes started on it."""

    def __init__(self, env: dict[str, str], database_url: str, redis: RedisServer) -> None:
        self.env = env
        self.database_url = database_url
        self.redis = redis
        self.host = "127.0.0.1"
        self.port = 0
        self.url = ""
        self.worker: Process | None = None
        self.processes: list[Process] = []
        self._web: Process | None = None

    @property
    def web(self) -> Process:
        if self._web is None:
            raise RuntimeError("no web process: call start_web() first")
        return self._web

    def start_web(self, name: str = "web") -> Process:
        """One web process of the real app (granian via `litestar run`, one worker), once it is live."""
        self.port = free_port()
        args = [str(BIN / "litestar"), "run", "--host", self.host, "--port", str(self.port)]
        self._web = self.spawn(name, args)
        self.url = f"http://{self.host}:{self.port}"
        wait_live(self.url, self._web)
        return self._web

    def start_worker(self, threads: int = 8) -> Process:
        """One worker: `dramatiq app.workers --processes 1 --threads THREADS`."""
        args = [str(BIN / "dramatiq"), "app.workers", "--processes", "1", "--threads", str(threads)]
        self.worker = self.spawn("worker", args)
        return self.worker

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        """Any process with the stack's environment (and `env` on top), stopped with the stack."""
        process = spawn(name, args, ROOT, {**self.env, **(env or {})})
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        while self.processes:
            stop(self.processes.pop())

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until /health/ready answers 200 (database, broker and a worker's heartbeat), as the tests wait."""
        wait_ready(LiveServer(url=self.url, processes=self.processes), timeout)

    def sign_up(self, count: int) -> list[str]:
        """`count` new users, each signed in, without email notifications: their bearer tokens."""
        tokens = []
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for _ in range(count):
                name = f"b{uuid.uuid4().hex[:10]}"
                identity = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
                created = client.post("/api/v1/auth/register", json=identity)
                if created.status_code != 201:
                    raise RuntimeError(f"register: {created.status_code} {created.text}")
                login = client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
                if login.status_code != 200:
                    raise RuntimeError(f"login: {login.status_code} {login.text}")
                token = str(login.json()["access_token"])
                headers = {"Authorization": f"Bearer {token}"}
                patched = client.patch("/api/v1/users/me", json={"email_notifications": False}, headers=headers)
                if patched.status_code != 200:
                    raise RuntimeError(f"profile: {patched.status_code} {patched.text}")
                tokens.append(token)
        return tokens


@contextlib.contextmanager
def service_stack(label: str, settings: dict[str, str] | None = None) -> Iterator[ServiceStack]:
    """Its own database (migrated), redis-server, secret, namespace and var/ folder; all removed at the end.

    No process runs yet: seed first if needed, then `start_web()`, `start_worker()`.
    """
    name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    var_dir = tempfile.mkdtemp(prefix=f"bench-{label}-var-")
    redis = RedisServer()
    try:
        redis.start()
        with database(name) as database_url:
            env = environment(name, database_url, redis.url, var_dir, settings or {})
            run_cli(env, "database", "upgrade", "--no-prompt")
            stack = ServiceStack(env, database_url, redis)
            try:
                yield stack
            finally:
                stack.stop_all()
    finally:
        redis.stop()
        shutil.rmtree(var_dir, ignore_errors=True)


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


# --- process memory --------------------------------------------------------------------------


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


def _proc_kib(path: Path, key: str) -> int:
    """The KiB figure on the line of `path` that starts with `key` (0 when unreadable)."""
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS of one process, in KiB (0 when it is gone)."""
    return _proc_kib(Path(f"/proc/{pid}/status"), "VmRSS:")


def pss_kib(pid: int) -> int:
    """Pss of one process from /proc/<pid>/smaps_rollup, in KiB (0 when unreadable)."""
    return _proc_kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")


# --- a light HTTP client ---------------------------------------------------------------------


class HttpError(RuntimeError):
    pass


class RawHttp:
    """One keep-alive HTTP/1.1 connection: a request at a time, bodies sized by Content-Length."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawHttp:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, json: Any = None
    ) -> tuple[int, bytes]:
        assert self._reader is not None
        assert self._writer is not None
        body = b"" if json is None else msgspec.json.encode(json)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        if json is not None:
            lines.append("Content-Type: application/json")
        lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length = None
        for line in header_lines:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value)
            elif key.strip().lower() == "transfer-encoding":
                raise HttpError(f"{method} {path}: chunked answers are not read by this client")
        return status, (await self._reader.readexactly(length) if length else b"")
