"""A private copy of the service for a benchmark: its own database, redis-server, web and worker processes.

`service_stack()` creates a Postgres database (migrated with `litestar database upgrade`),
starts a throw-away redis-server on a free port, then one web process (`litestar run`,
granian) and one worker process (`dramatiq app.workers`), each with its own SECRET_KEY,
REDIS_NAMESPACE and VAR_DIR, and removes all of it afterwards. `RawHttp` is a minimal
HTTP/1.1 keep-alive client on asyncio streams: it costs the benchmark process far less
CPU per request than a full client, so the service, not the client, is measured.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
from tests.processes import RedisServer
from tests.servers import BIN, Process, free_port, spawn

ROOT = Path(__file__).resolve().parents[1]
ADMIN_DATABASE_URL = os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PASSWORD = "bench horse battery staple"
READY_TIMEOUT_S = 60.0


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(ADMIN_DATABASE_URL, timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@dataclass
class ServiceStack:
    """The running copy: where it answers, its environment and its processes."""

    url: str
    host: str
    port: int
    env: dict[str, str]
    database_url: str
    redis: RedisServer
    web: Process
    worker: Process | None = None
    extra: list[Process] = field(default_factory=list)

    def logs(self) -> str:
        processes = [self.web, *([self.worker] if self.worker else []), *self.extra]
        return "\n".join(f"--- {p.name} ---\n{p.output()[-3000:]}" for p in processes)

    def start_worker(self, threads: int) -> Process:
        args = [str(BIN / "dramatiq"), "app.workers", "--processes", "1", "--threads", str(threads)]
        self.worker = spawn("bench-worker", args, ROOT, self.env)
        return self.worker

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until /health/ready answers 200 (database, broker and a worker's heartbeat)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for process in (self.web, self.worker):
                if process is not None and process.popen.poll() is not None:
                    raise RuntimeError(f"{process.name} exited early\n{self.logs()}")
            try:
                response = httpx.get(self.url + "/health/ready", timeout=2)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise RuntimeError(f"not ready after {timeout:.0f} s: {last}\n{self.logs()}")

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
def service_stack(
    label: str, settings: dict[str, str] | None = None, *, worker_threads: int = 8
) -> Iterator[ServiceStack]:
    """The whole service, isolated, with extra `settings` (environment variables); removed at the end."""
    name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    var_dir = tempfile.mkdtemp(prefix=f"bench-{label}-var-")
    redis = RedisServer()
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    processes: list[Process] = []
    try:
        redis.start()
        database_url = f"{ADMIN_DATABASE_URL.rsplit('/', 1)[0]}/{name}"
        env = {
            "APP_ENV": "production",
            "LITESTAR_APP": "app.web.app:create_app",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis.url,
            "REDIS_NAMESPACE": name,
            "SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
            "VAR_DIR": var_dir,
            "LOG_LEVEL": "WARNING",
            # Cheap hashing and no registration limit: only the set-up signs users up.
            "ARGON2_TIME_COST": "1",
            "ARGON2_MEMORY_KIB": "8192",
            "ARGON2_PARALLELISM": "1",
            "REGISTRATIONS_PER_HOUR": "100000",
            **(settings or {}),
        }
        upgrade = subprocess.run(
            [str(BIN / "litestar"), "database", "upgrade", "--no-prompt"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if upgrade.returncode != 0:
            raise RuntimeError(f"migrations failed:\n{upgrade.stdout}\n{upgrade.stderr}")
        port = free_port()
        web = spawn("bench-web", [str(BIN / "litestar"), "run", "--host", "127.0.0.1", "--port", str(port)], ROOT, env)
        processes.append(web)
        stack = ServiceStack(
            url=f"http://127.0.0.1:{port}",
            host="127.0.0.1",
            port=port,
            env=env,
            database_url=database_url,
            redis=redis,
            web=web,
        )
        stack.start_worker(worker_threads)
        assert stack.worker is not None
        processes.append(stack.worker)
        stack.wait_ready()
        yield stack
    finally:
        for process in reversed(processes):
            process.stop()
        redis.stop()
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(var_dir, ignore_errors=True)


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
