"""Processes a failure test owns: a private redis-server, a web process and workers with their own settings.

Unlike the shared `live_server`, everything here is started and stopped by the test, so it
can be killed, cut off from its broker or started again. Each stack talks to its own
redis-server (no other worker of the run can take its messages) and to the run's database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import dramatiq
import httpx
import redis

from tests.accounts import signed_in_headers
from tests.servers import STARTUP_TIMEOUT, Process, free_port, spawn, spawn_web, stop_all, worker_command

if TYPE_CHECKING:
    from app.workers.heartbeat import WorkerInfo

ROOT = Path(__file__).resolve().parents[1]
FINISHED = {"succeeded", "failed", "cancelled"}
T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """The first truthy answer of `check`, polling until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@dataclass
class RedisServer:
    """A throw-away redis-server on its own port (no persistence), which a test may stop and start again."""

    port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        executable = shutil.which("redis-server")
        assert executable, "redis-server is not on PATH"
        args = [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = spawn("redis", args, ROOT)

        def answers() -> bool:
            assert self.process is not None
            assert self.process.popen.poll() is None, self.process.output()
            try:
                return bool(redis.Redis.from_url(self.url, socket_connect_timeout=1).ping())
            except redis.RedisError:
                return False

        eventually(answers, timeout=timeout, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGKILL, timeout=5)
            self.process = None


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


#: The server script itself: /usr/sbin/rabbitmq-server, run as root, switches to the `rabbitmq` user, who
#: could not write a test's directories.
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


@dataclass
class RabbitmqServer:
    """A throw-away RabbitMQ node of its own (name, ports, data and logs in a temporary directory).

    `stop` shuts it down (SIGTERM: a clean stop, durable queues and persistent messages are
    kept) and `start` starts it again with the same data, as a broker restart does.
    """

    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    name: str = field(default_factory=lambda: f"test{uuid.uuid4().hex[:8]}@localhost")
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="app-test-rabbitmq-")))
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self, timeout: float = 90) -> None:
        assert os.access(RABBITMQ_SERVER, os.X_OK), f"{RABBITMQ_SERVER} is not there"
        (self.base / "enabled_plugins").write_text("[].\n")
        env = {
            "HOME": str(self.base),  # the Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
        }
        self.process = spawn("rabbitmq", [RABBITMQ_SERVER], self.base, env)

        def answers() -> bool:
            assert self.process is not None
            assert self.process.popen.poll() is None, self.process.output()[-4000:]
            # The AMQP listener opens last, once the node has booted.
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        eventually(answers, timeout=timeout, what=f"rabbitmq-server on port {self.port}", interval=0.2)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGTERM, timeout=30)
            self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def rabbitmq_server() -> Iterator[RabbitmqServer]:
    """A private RabbitMQ node, started here and removed (data included) at the end."""
    server = RabbitmqServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def live_workers(redis_url: str) -> list[WorkerInfo]:
    """The worker processes whose heartbeats the run's namespace holds on the Redis at `redis_url`."""
    from app.config import get_settings
    from app.workers.heartbeat import RedisHeartbeats

    heartbeats = RedisHeartbeats.of(redis_url, get_settings().redis_namespace)
    try:
        return heartbeats.alive()
    finally:
        heartbeats.close()


def send_message(redis_url: str, actor_name: str, *args: Any) -> None:
    """Enqueue one message for `actor_name` the way `actor.send(*args)` would, on the broker at `redis_url`.

    A bare broker with the service's namespace and the actor's queue: the test process's
    own broker points at the run's Redis, not at a test's private one. It wakes idle consumers,
    as the service's own senders (web, workers, scheduler) do.
    """
    from app.config import get_settings
    from app.workers import broker as declared
    from app.workers.brokers import WakingRedisBroker

    queue = declared.get_actor(actor_name).queue_name
    broker = WakingRedisBroker(url=redis_url, namespace=get_settings().redis_namespace)
    try:
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queue, actor_name=actor_name, args=args, kwargs={}, options={}
        )
        broker.enqueue(message)
    finally:
        broker.client.close()


def live_members(group: int) -> list[int]:
    """The processes of process group `group` that are still alive (not zombies), from /proc."""
    members = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(status.parent.name))
    return members


@dataclass
class Stack:
    """One web process and at most one worker (`dramatiq` CLI, whose workers are its children)."""

    env: dict[str, str]
    url: str
    web: Process
    worker: Process | None = None
    stopped: list[Process] = field(default_factory=list)
    #: The queues `worker` serves (all when empty); `others` serve the rest.
    queues: tuple[str, ...] = ()
    others: list[Process] = field(default_factory=list)
    #: Stopped with SIGTERM (a test that checks the stop) rather than killed.
    graceful: bool = False

    def start_worker(self) -> Process:
        assert self.worker is None or self.worker.popen.poll() is not None, "a worker is already running"
        self.worker = spawn(f"worker-{uuid.uuid4().hex[:4]}", worker_command(self.queues), ROOT, self.env)
        return self.worker

    def start_other_worker(self, queues: tuple[str, ...]) -> Process:
        """A worker for `queues` beside `worker` (which `kill_worker` leaves alone)."""
        other = spawn(f"worker-{'-'.join(queues)}-{uuid.uuid4().hex[:4]}", worker_command(queues), ROOT, self.env)
        self.others.append(other)
        return other

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole process group: the CLI and every worker process it forked."""
        assert self.worker is not None
        group = self.worker.popen.pid
        self.worker.stop(signal.SIGKILL, timeout=10)
        self.stopped.append(self.worker)
        self.worker = None
        eventually(lambda: not live_members(group), timeout=10, what=f"every process of group {group} to be gone")

    def processes(self) -> list[Process]:
        return [self.web, *self.stopped, *self.others, *([self.worker] if self.worker else [])]

    def logs(self, tail: int = 6000) -> str:
        """The last `tail` characters of each process's output."""
        return "\n".join(f"--- {p.name} ---\n{p.output()[-tail:]}" for p in self.processes())

    def stop(self) -> None:
        """Kill every process of the stack (SIGKILL to each group) once its test is done, unless `graceful`.

        Most of these tests do not study a graceful stop, and it cost each stack ~2 s: a Dramatiq
        worker's CLI notices SIGTERM within a second, then its log watcher within another. Tests
        of a stop send SIGTERM themselves (tests/test_workers.py) or ask for `graceful` (the chaos
        scenario checks that its web process stopped on SIGTERM). A stack's broker is its own or
        holds nothing another test reads; its rows are the run's, emptied after each test, and a
        killed process's open transactions are rolled back by the database.
        """
        sig = signal.SIGTERM if self.graceful else signal.SIGKILL
        stop_all([self.web, *self.others, *([self.worker] if self.worker else [])], timeout=10, sig=sig)


@contextlib.contextmanager
def stack(
    redis_url: str,
    *,
    worker: bool = True,
    settings: dict[str, str] | None = None,
    split: bool = False,
    graceful: bool = False,
) -> Iterator[Stack]:
    """A web process (and a worker, unless `worker=False`) on `redis_url` with extra `settings`, killed at the end.

    `split`: as in production, the worker serves only the `tasks` queue, and a second one
    the `mail` and `maintenance` queues. `graceful`: stopped with SIGTERM instead (`Stack.stop`).
    """
    port = free_port()
    env = {"REDIS_URL": redis_url, **(settings or {})}
    web = spawn_web("web", port, ROOT, env)
    running = Stack(
        env=env, url=f"http://127.0.0.1:{port}", web=web, queues=("tasks",) if split else (), graceful=graceful
    )
    try:
        if split:
            running.start_other_worker(("mail", "maintenance"))
        if worker:
            running.start_worker()

        def live() -> bool:
            assert web.popen.poll() is None, f"web exited early\n{running.logs()}"
            try:
                return httpx.get(running.url + "/health/live", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(live, timeout=STARTUP_TIMEOUT, what="the web process", interval=0.2)
        yield running
    finally:
        running.stop()


@contextlib.contextmanager
def user_client(url: str) -> Iterator[httpx.Client]:
    """An httpx client on `url`, signed in as a new user."""
    with httpx.Client(base_url=url, timeout=20) as client:
        client.headers.update(signed_in_headers(client))
        yield client


def task_of(api: httpx.Client, task_id: str) -> dict[str, Any]:
    response = api.get(f"/api/v1/tasks/{task_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_task(
    api: httpx.Client, task_id: str, until: Callable[[dict[str, Any]], bool], *, timeout: float, what: str
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        task = task_of(api, task_id)
        return task if until(task) else None

    return eventually(check, timeout=timeout, what=f"task {task_id} {what}", interval=0.1)
