"""Worker heartbeats: every worker process says it is alive every WORKER_HEARTBEAT_SECONDS.

/health/ready and the admin page read them, and a running task records the id of the
process running it. With Redis they are keys that expire after WORKER_STALE_SECONDS, and
after each beat the process's watcher (app.workers.recovery) looks who else is alive;
embedded, the workers share the web process, so a dictionary is enough.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import dramatiq
import msgspec
import redis
import structlog
from dramatiq.middleware import Middleware

from app.workers.per_process import WorkerCount

log = structlog.get_logger(__name__)


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    hostname: str
    pid: int
    threads: int
    started_at: float
    seen_at: float
    #: The queues this process's workers take messages from (empty: every queue).
    queues: tuple[str, ...] = ()
    #: The longest an idle worker of this process waits between two polls of the broker (its worker timeout).
    poll_ms: int = 0


@runtime_checkable
class HeartbeatStore(Protocol):
    #: Whether every worker process of the deployment beats here (Redis), or only this process's (memory).
    shared: bool

    def beat(self, info: WorkerInfo, ttl: float) -> None: ...
    def forget(self, worker_id: str) -> None: ...
    def alive(self) -> list[WorkerInfo]: ...
    def generation(self) -> str: ...


#: What a worker process does after each beat (app.workers.recovery): given the live workers' ids and the
#: store's generation (None, None: the store did not answer) and this process's own beat.
Watch = Callable[[set[str] | None, str | None, WorkerInfo], None]
#: Told of each beat, whether or not the store took it (app.workers.metrics records its time).
OnBeat = Callable[[WorkerInfo], None]


class MemoryHeartbeats:
    shared = False

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

    def generation(self) -> str:
        return "memory"


class RedisHeartbeats:
    """A key per worker process that expires `ttl` after its last beat, and a set of the ids that beat.

    Who is alive is read from the set and the keys it names (one SMEMBERS and one MGET, whatever
    else Redis holds): a SCAN for the keys' prefix walked the whole keyspace (sessions, rate
    limits, the broker's messages) every beat of every worker. Ids whose key has expired are
    taken out of the set as they are found; a live worker's next beat puts it back.
    """

    shared = True

    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix
        self._ids = prefix + "ids"

    @classmethod
    def of(cls, url: str, namespace: str) -> RedisHeartbeats:
        """The heartbeats of the service whose Redis keys start with `namespace` (REDIS_NAMESPACE)."""
        return cls(url, prefix=f"{namespace}:workers:")

    def beat(self, info: WorkerInfo, ttl: float) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            pipe.set(self._prefix + info.id, msgspec.json.encode(info), px=int(ttl * 1000))
            pipe.sadd(self._ids, info.id)
            pipe.execute()

    def forget(self, worker_id: str) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            pipe.delete(self._prefix + worker_id)
            pipe.srem(self._ids, worker_id)
            pipe.execute()

    def alive(self) -> list[WorkerInfo]:
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in self._client.smembers(self._ids))
        values = self._client.mget([self._prefix + worker_id for worker_id in ids]) if ids else []
        if expired := [worker_id for worker_id, value in zip(ids, values, strict=True) if value is None]:
            self._client.srem(self._ids, *expired)
        return [msgspec.json.decode(value, type=WorkerInfo) for value in values if value is not None]

    def close(self) -> None:
        self._client.close()

    def generation(self) -> str:
        """The Redis server's run id: it changes when Redis restarts (and lost what it held in memory)."""
        return str(self._client.info("server")["run_id"])


class Heartbeat(Middleware):
    """Starts a heartbeat thread when a process's first worker boots and removes the beat when its last stops.

    One beat per process: embedded, the web process runs a worker per queue, and its beat
    counts all their threads and queues.
    """

    def __init__(
        self,
        store: HeartbeatStore,
        *,
        interval: float,
        ttl: float,
        watch: Watch | None = None,
        on_beat: OnBeat | None = None,
    ) -> None:
        self.store = store
        self.interval = interval
        self.ttl = ttl
        self.watch = watch
        self.on_beat = on_beat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._info: WorkerInfo | None = None
        self._workers = WorkerCount()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        now = time.time()
        queues = tuple(sorted(worker.consumer_whitelist or ()))
        if not self._workers.boot() and self._info is not None:
            self._info = msgspec.structs.replace(
                self._info,
                threads=self._info.threads + worker.worker_threads,
                queues=tuple(sorted({*self._info.queues, *queues})) if self._info.queues and queues else (),
            )
            self._beat()
            return
        self._info = WorkerInfo(
            id=uuid.uuid4().hex,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            threads=worker.worker_threads,
            started_at=now,
            seen_at=now,
            queues=queues,
            poll_ms=worker.worker_timeout,
        )
        self._stop.clear()
        self._beat()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)
        self._thread.start()

    @property
    def worker_id(self) -> str | None:
        """This process's id in the heartbeat store, while one of its workers runs."""
        return self._info.id if self._info is not None else None

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not self._workers.shut_down():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._info is not None:
            self._safely(self.store.forget, self._info.id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()
            self._watch()

    def _beat(self) -> None:
        if self._info is not None:
            self._info = msgspec.structs.replace(self._info, seen_at=time.time())
            self._safely(self.store.beat, self._info, self.ttl)
            if self.on_beat is not None:
                try:
                    self.on_beat(self._info)
                except Exception:  # a failing listener must not stop the beats that keep this worker alive
                    log.exception("heartbeat.on_beat_failed")

    def _watch(self) -> None:
        """Tell the watcher who is alive (only a store that every process beats in can say who is gone)."""
        info = self._info
        if self.watch is None or info is None or not self.store.shared:
            return
        try:
            alive: set[str] | None = {worker.id for worker in self.store.alive()}
            generation: str | None = self.store.generation()
        except redis.RedisError:
            alive = generation = None
        try:
            self.watch(alive, generation, info)
        except Exception:
            log.exception("heartbeat.watch_failed")

    @staticmethod
    def _safely(call: Any, *args: Any) -> None:
        # A broker outage must not kill the heartbeat thread; the beat resumes when it is back.
        with contextlib.suppress(redis.RedisError):
            call(*args)


def current_worker_id(broker: dramatiq.Broker) -> str | None:
    """This process's id in the heartbeat store (what its running tasks record), while one of its workers runs."""
    for middleware in broker.middleware:
        if isinstance(middleware, Heartbeat):
            return middleware.worker_id
    return None
