"""Real processes for tests: the web server (granian, `python -m app.web.serve`) and Dramatiq workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

BIN = Path(sys.executable).parent
#: How long a process may take to start. Importing the app takes ~3 s on a quiet machine but far longer on
#: a loaded one (30 s seen with two cores shared by several test runs): a slow start is not a failure.
STARTUP_TIMEOUT = 150.0


def unavailable(reason: str) -> NoReturn:
    """What a test does when something it needs is not on this machine: it is skipped, saying `reason` (what is
    missing and how to get it); under CI=true, where everything must be there, it fails with that reason."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    """A port free now for a server a test starts, taken from below the kernel's ephemeral range.

    A port the kernel picks (bind to 0) comes from the range it also gives outgoing connections:
    between this check and the server's own bind, a client of another test could take it (seen:
    "Address already in use" under load), and while a server is down, a client retrying its port
    may be given that very port as its own (a TCP self-connection). Below the range only another
    test's server could take it, and each pick is random.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(10_000, low) if low > 11_000 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port below the ephemeral range")


def services_reachable(database_url: str, redis_url: str) -> str | None:
    """None when Postgres and Redis answer; otherwise what is wrong."""
    import asyncpg
    import redis

    async def postgres() -> None:
        connection = await asyncpg.connect(database_url, timeout=3)
        await connection.close()

    try:
        asyncio.run(postgres())
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"Postgres at {database_url} does not answer ({exc})"
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        return f"Redis at {redis_url} does not answer ({exc})"
    return None


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        self.signal(sig)
        return self.wait(timeout)

    def signal(self, sig: int) -> None:
        """Send `sig` to the process's whole group (its own children included), if it still runs."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float) -> int:
        """Its exit status, once it exits; its group is killed if it has not after `timeout` seconds."""
        if self.popen.poll() is None:
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        return self.popen.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def stop_all(processes: list[Process], timeout: float = 15, sig: int = signal.SIGTERM) -> None:
    """`sig` to every process at once, then wait for each: a Dramatiq worker takes up to 2 s to stop on
    SIGTERM (its CLI checks its stop flag and its log pipes once a second), so stopping one after another
    added up."""
    for process in processes:
        process.signal(sig)
    for process in processes:
        process.wait(timeout)


def spawn(name: str, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Process:
    log = Path(tempfile.mkstemp(prefix=f"app-test-{name}-", suffix=".log")[1])
    with log.open("wb") as out:
        popen = subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(name=name, popen=popen, log=log)


@dataclass
class LiveServer:
    url: str
    processes: list[Process] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()[-4000:]}" for p in self.processes)


def diagnosis(server: LiveServer) -> str:
    """What a test that waited in vain shows: the server's log tails and, on Postgres, every session of its
    database that is not idle (what it runs, what it waits for)."""
    shown = server.logs()
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        from tests.chaos import query  # chaos imports this module

        try:
            rows = query(
                url,
                "SELECT pid, state, wait_event_type, wait_event, now() - xact_start AS in_transaction,"
                " left(query, 200) AS query FROM pg_stat_activity"
                " WHERE datname = current_database() AND state <> 'idle' AND pid <> pg_backend_pid()",
            )
            shown += "\n--- database sessions ---\n" + "\n".join(map(str, rows))
        except Exception as exc:  # noqa: BLE001 - a diagnosis that fails must not hide the failure
            shown += f"\n--- database sessions: {exc!r} ---"
    return shown


def wait_ready(server: LiveServer, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for process in server.processes:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited early\n{server.logs()}")
        try:
            response = httpx.get(server.url + "/health/ready", timeout=2)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {timeout} s: {last}\n{server.logs()}")


def spawn_web(name: str, port: int, root: Path, env: dict[str, str] | None = None) -> Process:
    """The web process as the Procfile and the image start it: `python -m app.web.serve` on 127.0.0.1:`port`.

    `litestar run` would import the whole app once more in its CLI process (about 2 s of CPU a
    start; tests start dozens): tests of `litestar run` itself start it by name.
    """
    command = [str(BIN / "python"), "-m", "app.web.serve"]
    return spawn(name, command, root, {**(env or {}), "HOST": "127.0.0.1", "PORT": str(port)})


def worker_command(queues: tuple[str, ...] = (), threads: int = 4) -> list[str]:
    """`dramatiq app.workers` for `queues` (all of them when empty), as the Procfile runs it."""
    only = ["--queues", *queues] if queues else []
    return [str(BIN / "dramatiq"), "app.workers", *only, "--processes", "1", "--threads", str(threads)]


def start_worker(root: Path, env: dict[str, str] | None = None, queues: tuple[str, ...] = ()) -> Process:
    return spawn("-".join(("worker", *queues)), worker_command(queues), root, env)


@contextlib.contextmanager
def start_live_server(root: Path, *, services: bool) -> Iterator[LiveServer]:
    port = free_port()
    server = LiveServer(url=f"http://127.0.0.1:{port}")
    server.processes.append(spawn_web("web", port, root))
    if services:
        # As in production, users' tasks have workers of their own (src/app/workers/queues.py).
        server.processes.append(start_worker(root, queues=("tasks",)))
        server.processes.append(start_worker(root, queues=("mail", "maintenance")))
    try:
        wait_ready(server)
        yield server
    finally:
        stop_all(server.processes)
