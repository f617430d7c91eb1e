"""Worker heartbeats: every worker process says it is alive every few seconds.

/health/ready and the admin page read them. With Redis they are keys that expire;
embedded, the workers share the web process, so a dictionary is enough.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from typing import Any, Protocol, runtime_checkable

import dramatiq
import msgspec
import redis
from dramatiq.middleware import Middleware


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    hostname: str
    pid: int
    threads: int
    started_at: float
    seen_at: float


@runtime_checkable
class HeartbeatStore(Protocol):
    def beat(self, info: WorkerInfo, ttl: float) -> None: ...
    def forget(self, worker_id: str) -> None: ...
    def alive(self) -> list[WorkerInfo]: ...


class MemoryHeartbeats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beats: dict[str, tuple[float, WorkerInfo]] = {}

    def beat(self, info: WorkerInfo, ttl: float) -> None:
        with self._lock:
            self._beats[info.id] = (time.monotonic() + ttl, info)

    def forget(self, worker_id: str) -> None:
        with self._lock:
            self._beats.pop(worker_id, None)

    def alive(self) -> list[WorkerInfo]:
        now = time.monotonic()
        with self._lock:
            return [info for expires, info in self._beats.values() if expires > now]


class RedisHeartbeats:
    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix

    def beat(self, info: WorkerInfo, ttl: float) -> None:
        self._client.set(self._prefix + info.id, msgspec.json.encode(info), px=int(ttl * 1000))

    def forget(self, worker_id: str) -> None:
        self._client.delete(self._prefix + worker_id)

    def alive(self) -> list[WorkerInfo]:
        keys = list(self._client.scan_iter(match=self._prefix + "*", count=100))
        values = self._client.mget(keys) if keys else []
        return [msgspec.json.decode(value, type=WorkerInfo) for value in values if value]


class Heartbeat(Middleware):
    """Starts a heartbeat thread when a worker boots and removes the beat when it stops."""

    def __init__(self, store: HeartbeatStore, *, interval: float, ttl: float) -> None:
        self.store = store
        self.interval = interval
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._info: WorkerInfo | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        now = time.time()
        self._info = WorkerInfo(
            id=uuid.uuid4().hex,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            threads=worker.worker_threads,
            started_at=now,
            seen_at=now,
        )
        self._stop.clear()
        self._beat()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._info is not None:
            self._safely(self.store.forget, self._info.id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def _beat(self) -> None:
        if self._info is not None:
            self._info = msgspec.structs.replace(self._info, seen_at=time.time())
            self._safely(self.store.beat, self._info, self.ttl)

    @staticmethod
    def _safely(call: Any, *args: Any) -> None:
        # A broker outage must not kill the heartbeat thread; the beat resumes when it is back.
        with contextlib.suppress(redis.RedisError):
            call(*args)
