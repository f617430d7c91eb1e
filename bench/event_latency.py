"""Submit-to-running latency on an idle service, against raw Dramatiq's idle job start latency.

Project: one user holds a live-event stream (`GET /api/v1/events`, read with a raw
socket reader) on an otherwise idle service (one web process, one worker process, its own
Postgres database and redis-server). One task at a time, after a pause, the benchmark
records `time.time()`, submits a demo task (`POST /api/v1/tasks`) and waits on the stream
for that task's `task.updated` event with status `running`. The task's own timestamps
(`created_at` by the web process, `started_at` by the worker's claim) split the time.

Baseline, in the same run and on the same redis-server, interleaved with the project's
samples: a plain `dramatiq.Worker` (Dramatiq's own Redis broker, one thread, worker
timeout WORKER_POLL_MS) and the time from `actor.send()` to the first line of the actor's
body, as `bench.job_start_latency` measures it.

`python -m bench.event_latency raw-worker REDIS_URL TIMEOUT_MS` is the baseline's worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import dramatiq
import msgspec
import redis
from dramatiq.brokers.redis import RedisBroker

from bench import Section, percentiles, run_alone, table
from bench.service_stack import FAST_SIGN_UP, RawHttp, ServiceStack, service_stack

SAMPLES = 200
PAUSE_S = 0.3  # least idle time before each sample, so an idle worker's poll back-off is at its maximum
PAUSE_JITTER_S = 0.1  # added at random, so sends do not lock to the poll phase
EVENT_TIMEOUT_S = 10.0
IDLE_WINDOW_S = 5.0
TASK_BODY = {"kind": "demo", "params": {"steps": 1, "step_ms": 0}}
RAW_NAMESPACE = "bench-latency-raw"
RAW_QUEUE = "bench-latency"
POINTS = (50, 90, 99)

_ROOT = Path(__file__).resolve().parents[1]

#: What tracing found and what was changed, with this benchmark's figures before and after.
PROFILE_AND_FIX = """\
**Profile and fix.** Before (Dramatiq's own Redis broker in the service, `WORKER_POLL_MS`
100, on this two-core machine shared with other benchmarks and test runs): submit to
`running` event p50 133 ms, p90 213 ms, p99 426 ms, 2.8x the raw Dramatiq start (p50
47 ms, p99 103 ms) in the same run; the worker's claim came at p50 97 ms, 43 ms after
the 202 (p50 54 ms): the message waited for the idle consumer's next poll, whose
back-off grows to the worker timeout. Dramatiq 2.2's Redis consumer has no wake-up
(`_RedisConsumer.__next__` sleeps `compute_backoff(...)` after an empty fetch; the
broker exposes `consumer_class` to replace the consumer), so the service's broker is now
`WakingRedisBroker`: a send is followed by a PUBLISH on the queue's wake-up channel and
the idle consumer waits on its open subscription where it slept (a wake-up sent while it
fetches is kept in the subscription, so none is missed). After, same machine: p50 59 ms,
p90 106 ms, p99 275 ms, 1.5x the raw start (p50 39 ms, p99 95 ms); the claim now comes
at p50 34 ms, before the client has even read its 202 (p50 39 ms). Idle cost unchanged:
80.8 Redis commands/s against 79.6 before (the same polls; a wake-up is one PUBLISH per
send). Where the rest goes (p50, after): 16 ms from the start of the request to the
task row being built in the web process (request parsing and the bearer user's query on
a saturated machine), 18 ms more to the claim (the create transaction and its commit,
the send through a thread plus the wake-up, the fetch), then 25 ms from the claim to the
event on the stream (the claim's UPDATE, event insert and commit, the PUBLISH, the web
process's channel listener, the stream's re-read of the table and its write). The
targets (p50 under 20 ms, p99 under 100 ms) are not met on this machine, where the
submit-to-202 time alone is 39 ms at the median; the p99 follows the machine's load
(the run's slowest request took longer than the whole p50 path).

**Second round** (quiet machine, `python -m bench.event_latency` before and after each
step, same procedure): p50 25.1 ms, p99 33.9 ms before; the worker's claim came at p50
15.2 ms and the `running` event 10 ms after it. Changes, in order, with the p50/p99 of
submit to `running` after each: (1) the write engine checks a pooled connection with one
round trip (`SELECT 1`) on checkout instead of `pool_pre_ping`, which with asyncpg is
BEGIN, an empty query and ROLLBACK on every checkout; the claim is one Core `UPDATE ...
RETURNING` into a `TaskOut` (no ORM object); the create path's statements are built once:
about 4 round trips and 1.5 ms of CPU less per task (measured in process); (2) the
streams' shared read of the event table runs on the read engine (autocommit, no check):
20.4 / 28.1 ms; (3) the create handler sends the task's message before it wakes the
task's streams, so the worker starts one Redis round trip sooner: 20.2 / 30.5 ms; (4) the
shared read's two statements (events, deactivated readers) run side by side: 18.4 / 25.9
ms. The table above is this run's.
"""


# --- baseline: raw Dramatiq ------------------------------------------------------------------


def _raw_actor(url: str) -> tuple[RedisBroker, dramatiq.Actor[[int], None]]:
    broker = RedisBroker(url=url, namespace=RAW_NAMESPACE)  # type: ignore[no-untyped-call]
    recorder = redis.Redis.from_url(url)

    def record_start(sequence: int) -> None:
        recorder.rpush(f"{RAW_NAMESPACE}:started", f"{sequence} {time.time():.6f}")

    actor: dramatiq.Actor[[int], None] = dramatiq.actor(
        actor_name="bench_record_start", queue_name=RAW_QUEUE, broker=broker
    )(record_start)
    return broker, actor


def serve_raw(url: str, timeout_ms: int) -> None:
    broker, _ = _raw_actor(url)
    worker = dramatiq.Worker(broker, worker_timeout=timeout_ms, worker_threads=1)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    redis.Redis.from_url(url).set(f"{RAW_NAMESPACE}:ready", "1")
    while not stop.wait(0.2):
        pass
    worker.stop()
    broker.close()


class RawDramatiq:
    """The baseline's worker process and a sender that times one message at a time."""

    def __init__(self, url: str, timeout_ms: int) -> None:
        self.client = redis.Redis.from_url(url)
        command = [sys.executable, "-m", "bench.event_latency", "raw-worker", url, str(timeout_ms)]
        self.process = subprocess.Popen(command, cwd=_ROOT, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.client.exists(f"{RAW_NAMESPACE}:ready"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the raw Dramatiq worker did not start")
            time.sleep(0.05)
        self.broker, self.actor = _raw_actor(url)

    def start_latency_ms(self, sequence: int) -> float:
        sent = time.time()
        self.actor.send(sequence)
        reply = self.client.blpop([f"{RAW_NAMESPACE}:started"], timeout=EVENT_TIMEOUT_S)
        if reply is None:
            raise RuntimeError(f"raw message {sequence} did not start within {EVENT_TIMEOUT_S:.0f} s")
        got, started = reply[1].decode().split()
        if int(got) != sequence:
            raise RuntimeError(f"the raw worker ran message {got}, expected {sequence}")
        return (float(started) - sent) * 1000

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.broker.close()
        self.client.close()


# --- project: the service --------------------------------------------------------------------


class EventStream:
    """A raw reader of `GET /api/v1/events`: the chunked body parsed into (event, data) messages."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._text = ""
        self._chunked = False

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        request = (
            f"GET /api/v1/events HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n"
        )
        self._writer.write(request.encode())
        head = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        if " 200 " not in head.split("\r\n", 1)[0]:
            raise RuntimeError(f"the event stream answered {head.splitlines()[0]}")
        self._chunked = "transfer-encoding: chunked" in head.lower()

    async def _more(self) -> None:
        assert self._reader is not None
        if not self._chunked:
            data = await self._reader.read(65536)
            if not data:
                raise RuntimeError("the event stream ended")
            self._text += data.decode()
            return
        size = int((await self._reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
        if size == 0:
            raise RuntimeError("the event stream ended")
        self._text += (await self._reader.readexactly(size + 2))[:-2].decode()

    async def next(self) -> tuple[str, dict[str, Any]]:
        """The next message with data (comments and heartbeats skipped): its event name and its data."""
        while True:
            while "\n\n" not in self._text.replace("\r\n", "\n"):
                await self._more()
            self._text = self._text.replace("\r\n", "\n")
            block, self._text = self._text.split("\n\n", 1)
            event, data = "message", []
            for line in block.split("\n"):
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
            if data:
                return event, msgspec.json.decode("\n".join(data))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()


@dataclass
class Sample:
    created_ms: float  # submit -> the task row built in the web process (created_at)
    accepted_ms: float  # submit -> 202 read by the client
    queued_ms: float  # submit -> the `queued` event read from the stream
    claimed_ms: float  # submit -> the worker's claim (started_at)
    running_ms: float  # submit -> the `running` event read from the stream


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


#: What the stream reader hands on: (time.time() when read, event name, data).
Received = tuple[float, str, dict[str, Any]]


async def _read_forever(stream: EventStream, into: asyncio.Queue[Received]) -> None:
    """Time every message as it is read, whatever the benchmark is waiting for meanwhile."""
    while True:
        event, data = await stream.next()
        into.put_nowait((time.time(), event, data))


async def _one(api: RawHttp, received: asyncio.Queue[Received], token: str) -> Sample:
    began = time.time()
    headers = {"Authorization": f"Bearer {token}"}
    status, body = await api.request("POST", "/api/v1/tasks", headers=headers, json=TASK_BODY)
    accepted = time.time()
    if status != 202:
        raise RuntimeError(f"POST /api/v1/tasks answered {status}: {body[:300]!r}")
    task = msgspec.json.decode(body)
    queued = 0.0
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while True:
            at, event, data = await received.get()
            if event != "task.updated" or data.get("id") != task["id"]:
                continue
            if data["status"] == "queued":
                queued = queued or at
            elif data["status"] == "running":
                running = at
                break
            else:
                raise RuntimeError(f"task {task['id']} went {data['status']} before a running event")

    def ms(when: float) -> float:
        return (when - began) * 1000

    return Sample(
        created_ms=ms(_seconds(task["created_at"])),
        accepted_ms=ms(accepted),
        queued_ms=ms(queued or running),
        claimed_ms=ms(_seconds(data["started_at"])),
        running_ms=ms(running),
    )


async def _pause(received: asyncio.Queue[Received], seconds: float) -> None:
    """Wait, dropping what the stream sends meanwhile (the previous task's later events)."""
    await asyncio.sleep(seconds)
    while not received.empty():
        received.get_nowait()


async def _interleaved(stack: ServiceStack, token: str, raw: RawDramatiq) -> tuple[list[Sample], list[float]]:
    stream = EventStream(stack.host, stack.port, token)
    await stream.open()
    received: asyncio.Queue[Received] = asyncio.Queue()
    reader = asyncio.create_task(_read_forever(stream, received))
    samples: list[Sample] = []
    raw_ms: list[float] = []
    try:
        async with RawHttp(stack.host, stack.port) as api:
            for warm_up in range(3):  # connections, caches and first-call costs
                await _pause(received, PAUSE_S)
                await _one(api, received, token)
                await asyncio.to_thread(raw.start_latency_ms, -1 - warm_up)
            for sequence in range(SAMPLES):
                await _pause(received, PAUSE_S / 2 + random.uniform(0, PAUSE_JITTER_S))
                raw_ms.append(await asyncio.to_thread(raw.start_latency_ms, sequence))
                await _pause(received, PAUSE_S / 2 + random.uniform(0, PAUSE_JITTER_S))
                samples.append(await _one(api, received, token))
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            await reader
        await stream.close()
    return samples, raw_ms


def _idle_commands_per_s(stack: ServiceStack) -> float:
    """Redis commands per second on the service's redis-server while it is idle (every client counted)."""
    client = redis.Redis.from_url(stack.redis.url)
    try:
        before = int(client.info("stats")["total_commands_processed"])
        time.sleep(IDLE_WINDOW_S)
        return (int(client.info("stats")["total_commands_processed"]) - before - 1) / IDLE_WINDOW_S
    finally:
        client.close()


def _measure() -> tuple[list[Sample], list[float], int, float]:
    from app.config import get_settings

    poll_ms = get_settings().worker_poll_ms
    settings = {**FAST_SIGN_UP, "WORKER_POLL_MS": str(poll_ms)}
    with service_stack("latency", settings) as stack:
        stack.start_web()
        stack.start_worker()
        stack.wait_ready()
        token = stack.sign_up(1)[0]
        idle = _idle_commands_per_s(stack)
        raw = RawDramatiq(stack.redis.url, poll_ms)
        try:
            samples, raw_ms = asyncio.run(_interleaved(stack, token, raw))
        finally:
            raw.close()
    return samples, raw_ms, poll_ms, idle


def _ms(value: float) -> str:
    return f"{value:,.1f}"


def run() -> Section:
    samples, raw_ms, poll_ms, idle = _measure()
    steps = {
        "task row built (created_at)": [s.created_ms for s in samples],
        "202 read by the client": [s.accepted_ms for s in samples],
        "`queued` event read from the stream": [s.queued_ms for s in samples],
        "claimed by the worker (started_at)": [s.claimed_ms for s in samples],
        "`running` event read from the stream": [s.running_ms for s in samples],
    }
    cuts = {name: percentiles(values, POINTS) for name, values in steps.items()}
    raw_cuts = percentiles(raw_ms, POINTS)
    running = cuts["`running` event read from the stream"]
    accepted = cuts["202 read by the client"]
    figures = {
        **{f"running_p{p}_ms": running[p] for p in POINTS},
        **{f"accepted_p{p}_ms": accepted[p] for p in POINTS},
        **{f"raw_dramatiq_p{p}_ms": raw_cuts[p] for p in POINTS},
        "running_max_ms": max(s.running_ms for s in samples),
        "p50_ratio_to_raw": running[50] / raw_cuts[50],
        "p99_ratio_to_raw": running[99] / raw_cuts[99],
        "p50_ratio_to_202": running[50] / accepted[50],
        "worker_poll_ms": float(poll_ms),
        "idle_redis_commands_per_s": idle,
    }
    rows = [["raw Dramatiq: `send()` to the actor's first line", *(_ms(raw_cuts[p]) for p in POINTS)]]
    rows += [[f"service: submit to {name}", *(_ms(cuts[name][p]) for p in POINTS)] for name in steps]
    results = table(["From the start of the request (or send) to", *(f"p{p} (ms)" for p in POINTS)], rows, "lrrr")
    ratios = table(
        ["Ratio", "Value"],
        [
            ["submit to `running` event, p50: service / raw Dramatiq start", f"{figures['p50_ratio_to_raw']:.2f}x"],
            ["submit to `running` event, p99: service / raw Dramatiq start", f"{figures['p99_ratio_to_raw']:.2f}x"],
            ["submit to `running` event / submit to 202, p50", f"{figures['p50_ratio_to_202']:.1f}x"],
        ],
        align="lr",
    )
    body = f"""\
How soon a user sees a task start: on an idle service (one web process, one worker process
with 8 threads, its own Postgres database and redis-server), one user holds a live-event
stream (`GET /api/v1/events` with a bearer token, read by a raw socket reader) and submits
a demo task (`{{"steps": 1, "step_ms": 0}}`) through `POST /api/v1/tasks`, one at a time, after a
pause of {PAUSE_S:.1f}-{PAUSE_S + 2 * PAUSE_JITTER_S:.1f} s; the figure is the time until that task's
`task.updated` event with status `running` is read from the stream. {SAMPLES} tasks after 3
warm-ups. `WORKER_POLL_MS` is {poll_ms} ms in this run. The steps in between come from the
task's own timestamps (`created_at`, taken by the web process; `started_at`, by the worker's
claim) against the client's clock, on the same machine.

Baseline, interleaved with the service's samples on the same redis-server: a plain
`dramatiq.Worker` (Dramatiq's own Redis broker, 1 thread, `worker_timeout` = `WORKER_POLL_MS`)
and the time from `send()` to the first line of a recording actor, as in "Dramatiq idle
job start latency". Target: p50 under 20 ms, p99 under 100 ms for the service.

The service's worker does not wait for its next poll: each send is followed by a PUBLISH on
the queue's wake-up channel, and an idle consumer waits on that subscription instead of
sleeping (`WakingRedisBroker` in `app.workers.brokers`), polling at least every
`WORKER_POLL_MS` all the same. While idle, the service's redis-server ran {idle:.1f} commands/s
over {IDLE_WINDOW_S:.0f} s (all clients: the worker's polls of its queues, heartbeats, the stream's
subscription).

{results}

{ratios}

{PROFILE_AND_FIX}
"""
    return Section(title="Submit to first live event (idle service)", body=body, figures=figures)


if __name__ == "__main__":
    run_alone(run, {"raw-worker": lambda url, timeout_ms: serve_raw(url, int(timeout_ms))})
