"""A throw-away copy of the peer for a benchmark: its own Postgres database, redis-server and processes.

`peer_stack()` creates the database (tables from the models, dropped at the end) and starts
a redis-server (db 0: the Celery broker and the progress PUBLISHes, db 1: the result
backend); `start_web()` runs uvicorn, `start_worker()` a Celery worker, both with the
repository root on PYTHONPATH, the way `bench.service_stack` starts the service's processes.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import httpx
from celery import Celery
from tests.processes import RedisServer
from tests.servers import BIN, Process, free_port, spawn

from bench.peer.models import create_schema
from bench.service_stack import PASSWORD, READY_TIMEOUT_S, ROOT, database, stop, wait_live


class PeerStack:
    """One benchmark's copy of the peer: its settings and the processes started on it."""

    def __init__(self, env: dict[str, str], database_url: str, redis: RedisServer) -> None:
        self.env = env
        self.database_url = database_url  # plain postgresql:// URL, for asyncpg
        self.redis = redis
        self.host = "127.0.0.1"
        self.port = 0
        self.url = ""
        self.web: Process | None = None
        self.worker: Process | None = None
        self.processes: list[Process] = []

    def spawn(self, name: str, args: list[str]) -> Process:
        process = spawn(f"peer-{name}", args, ROOT, self.env)
        self.processes.append(process)
        return process

    def start_web(self) -> Process:
        """`uvicorn bench.peer.app:app`: one process, access log off (the service logs at WARNING too)."""
        self.port = free_port()
        args = [str(BIN / "uvicorn"), "bench.peer.app:app", "--host", self.host, "--port", str(self.port)]
        self.web = self.spawn("web", [*args, "--no-access-log", "--log-level", "warning"])
        self.url = f"http://{self.host}:{self.port}"
        wait_live(self.url, self.web)
        return self.web

    def start_worker(self, concurrency: int) -> Process:
        """`celery worker --concurrency N` with Celery's default pool (prefork), once it runs a task."""
        args = [str(BIN / "celery"), "-A", "bench.peer.worker:celery_app", "worker", "--concurrency", str(concurrency)]
        self.worker = self.spawn("worker", [*args, "--loglevel", "WARNING"])
        self._wait_worker(self.worker)
        return self.worker

    def _wait_worker(self, worker: Process, timeout: float = READY_TIMEOUT_S) -> None:
        client = Celery("peer-client", broker=self.env["PEER_BROKER_URL"], backend=self.env["PEER_RESULT_BACKEND"])
        try:
            pong = client.send_task("peer.ping")
            deadline = time.monotonic() + timeout
            while not pong.ready():
                if worker.popen.poll() is not None:
                    raise RuntimeError(f"the Celery worker exited:\n{worker.output()[-4000:]}")
                if time.monotonic() > deadline:
                    log = worker.output()[-4000:]
                    raise RuntimeError(f"the Celery worker ran nothing within {timeout:.0f} s:\n{log}")
                time.sleep(0.1)
            pong.forget()
        finally:
            client.close()

    def sign_up(self, count: int) -> list[str]:
        """`count` new users, each signed in: their bearer tokens."""
        tokens = []
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for _ in range(count):
                name = f"p{uuid.uuid4().hex[:10]}"
                identity = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
                created = client.post("/api/v1/auth/register", json=identity)
                if created.status_code != 201:
                    raise RuntimeError(f"peer register: {created.status_code} {created.text}")
                login = client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
                if login.status_code != 200:
                    raise RuntimeError(f"peer login: {login.status_code} {login.text}")
                tokens.append(str(login.json()["access_token"]))
        return tokens

    def stop_all(self) -> None:
        while self.processes:
            stop(self.processes.pop())


@contextlib.contextmanager
def peer_stack(label: str = "peer") -> Iterator[PeerStack]:
    """The peer's own database (its tables created) and redis-server; both removed at the end."""
    name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    redis = RedisServer()
    try:
        redis.start()
        with database(name) as database_url:
            create_schema(database_url.replace("postgresql://", "postgresql+asyncpg://", 1))
            base = redis.url.rsplit("/", 1)[0]
            env = {
                "PYTHONPATH": str(ROOT),
                "PEER_DATABASE_URL": database_url.replace("postgresql://", "postgresql+asyncpg://", 1),
                "PEER_BROKER_URL": f"{base}/0",
                "PEER_RESULT_BACKEND": f"{base}/1",
                "PEER_EVENTS_URL": f"{base}/0",
                "PEER_SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
            }
            stack = PeerStack(env, database_url, redis)
            try:
                yield stack
            finally:
                stack.stop_all()
    finally:
        redis.stop()
