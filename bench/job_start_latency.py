"""Idle job start latency on Redis: Dramatiq's own broker against the project's waking broker.

Dramatiq's idle Redis consumer sleeps between polls with a back-off that grows up to the
worker timeout, so a message sent to an idle queue waits for the next poll. The project's
`WakingRedisBroker` (app.workers.brokers) publishes a wake-up with each send, which an idle
consumer waits on instead of sleeping. Two real worker processes run side by side, one
per configuration, each on its own queue in a dedicated Redis database. The sender
alternates between them: it waits until the target worker has been idle for at least
IDLE_GAP_S (its back-off is at its maximum by then), records `time.time()`, sends one
message, and waits for the actor's own `time.time()` taken as its body starts. Before
that, with no messages at all, it counts the Redis commands each idle worker's
connections issue (MONITOR, filtered by client name, so other clients of the same server
are not counted).

`python -m bench.job_start_latency worker LABEL TIMEOUT_MS` is the worker process (LABEL
`project` runs the waking broker, any other Dramatiq's own).
"""

from __future__ import annotations

import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from app.workers.brokers import WakingRedisBroker
from bench import REDIS_URL, Section, percentiles, run_alone, table

BASELINE_TIMEOUT_MS = 1000  # Dramatiq's default worker_timeout
PROJECT = "project"  # the label of the waking broker's configuration
MESSAGES = 60  # per configuration
IDLE_GAP_S = 1.2  # least idle time of a worker before each message
GAP_JITTER_S = 0.3  # added at random to the gap, so sends do not lock to the poll phase
SETTLE_S = 3.0  # idle time before counting commands, for the back-off to reach its maximum
IDLE_WINDOW_S = 5.0  # how long idle commands are counted
READY_TIMEOUT_S = 30.0
RESULT_TIMEOUT_S = 10
NAMESPACE = "bench"
RECORDER_NAME = "bench-recorder"
SENDER_NAME = "bench-sender"
PERCENTILES = (50, 90, 99)

#: Commands per second sent by an idle worker, and how many of each command.
IdleCommands = tuple[float, Counter[str]]

_ROOT = Path(__file__).resolve().parents[1]
_recorder: redis.Redis | None = None


@dataclass(frozen=True)
class Config:
    label: str
    description: str
    timeout_ms: int

    @property
    def worker_name(self) -> str:
        return _worker_name(self.label)


def _worker_name(label: str) -> str:
    """The Redis client name of a worker's broker connections, to tell its commands apart."""
    return f"bench-worker-{label}"


def _results_key(label: str) -> str:
    return f"{NAMESPACE}:started:{label}"


def _ready_key(label: str) -> str:
    return f"{NAMESPACE}:ready:{label}"


def _recorder_client() -> redis.Redis:
    global _recorder
    if _recorder is None:
        _recorder = redis.Redis.from_url(REDIS_URL, client_name=RECORDER_NAME)
    return _recorder


def build(label: str, client_name: str) -> tuple[RedisBroker, dramatiq.Actor[[int], None]]:
    """The broker and the actor of one configuration, the same in the worker and the sender."""
    client = redis.Redis.from_url(REDIS_URL, client_name=client_name)
    # The waking broker publishes a wake-up on send, so the sender needs it too.
    kind = WakingRedisBroker if label == PROJECT else RedisBroker
    broker = kind(client=client, namespace=NAMESPACE)  # type: ignore[no-untyped-call]
    key = _results_key(label)

    def record_start(sequence: int) -> None:
        started = time.time()
        _recorder_client().rpush(key, f"{sequence} {started:.6f}")

    actor: dramatiq.Actor[[int], None] = dramatiq.actor(
        actor_name=f"record_start_{label}", queue_name=f"bench-latency-{label}", broker=broker
    )(record_start)
    return broker, actor


def serve(label: str, timeout_ms: int) -> None:
    """The worker process: one thread, the given worker timeout, until SIGTERM or SIGINT."""
    broker, _ = build(label, _worker_name(label))
    worker = dramatiq.Worker(broker, worker_timeout=timeout_ms, worker_threads=1)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    _recorder_client().set(_ready_key(label), "1")
    while not stop.wait(0.2):
        pass
    worker.stop()
    broker.close()


def _start_worker(config: Config) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench.job_start_latency", "worker", config.label, str(config.timeout_ms)]
    return subprocess.Popen(command, cwd=_ROOT, stdout=subprocess.DEVNULL)


def _stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(client: redis.Redis, configs: list[Config], processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    for config, process in zip(configs, processes, strict=True):
        while not client.exists(_ready_key(config.label)):
            if process.poll() is not None:
                raise RuntimeError(f"the {config.label} worker exited with status {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {config.label} worker did not start within {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.05)


def _send_and_wait(client: redis.Redis, label: str, actor: dramatiq.Actor[[int], None], sequence: int) -> float:
    """Send one message; the milliseconds from the send to the start of the actor's body."""
    sent = time.time()
    actor.send(sequence)
    reply = client.blpop([_results_key(label)], timeout=RESULT_TIMEOUT_S)
    if reply is None:
        raise RuntimeError(f"message {sequence} to the {label} worker did not start within {RESULT_TIMEOUT_S} s")
    value = reply[1]
    got, started = (value.decode() if isinstance(value, bytes) else value).split()
    if int(got) != sequence:
        raise RuntimeError(f"the {label} worker ran message {got}, expected {sequence}")
    return (float(started) - sent) * 1000


_MONITOR_LINE = re.compile(rb'^\+\d+\.\d+ \[\d+ (\S+)\] "([^"]*)"')


def _monitor(seconds: float) -> tuple[list[tuple[str, str]], float]:
    """(client address, command) of every command the server runs for `seconds`, and the exact span."""
    parts = urlsplit(REDIS_URL)
    seen: list[tuple[str, str]] = []
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=2) as sock:
        sock.sendall(b"MONITOR\r\n")
        buffer = b""
        while b"\r\n" not in buffer:
            buffer += sock.recv(4096)
        reply, buffer = buffer.split(b"\r\n", 1)
        if reply != b"+OK":
            raise RuntimeError(f"MONITOR refused: {reply.decode(errors='replace')}")
        began = time.monotonic()
        deadline = began + seconds
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                if match := _MONITOR_LINE.match(line):
                    seen.append((match[1].decode(), match[2].decode().upper()))
        span = time.monotonic() - began
    return seen, span


def _idle_commands(client: redis.Redis, configs: list[Config]) -> dict[str, IdleCommands]:
    """Per configuration: Redis commands per second from the idle worker, and which commands."""
    seen, span = _monitor(IDLE_WINDOW_S)
    # Connections opened during the window are still open: list the clients afterwards.
    addresses = {entry["addr"]: entry["name"] for entry in client.client_list()}
    result: dict[str, IdleCommands] = {}
    for config in configs:
        commands = Counter(command for addr, command in seen if addresses.get(addr) == config.worker_name)
        result[config.label] = (sum(commands.values()) / span, commands)
    return result


def _measure(client: redis.Redis, configs: list[Config]) -> tuple[dict[str, list[float]], dict[str, IdleCommands]]:
    actors = {config.label: build(config.label, SENDER_NAME)[1] for config in configs}
    # Warm up: the first message of a fresh process pays for imports and connections.
    for config in configs:
        _send_and_wait(client, config.label, actors[config.label], -1)
    time.sleep(SETTLE_S)
    idle = _idle_commands(client, configs)

    latencies: dict[str, list[float]] = {config.label: [] for config in configs}
    last_done = {config.label: time.time() for config in configs}
    for sequence in range(MESSAGES):
        order = configs if sequence % 2 == 0 else configs[::-1]
        for config in order:
            ready_at = last_done[config.label] + IDLE_GAP_S + random.uniform(0, GAP_JITTER_S)
            time.sleep(max(0.0, ready_at - time.time()))
            latencies[config.label].append(_send_and_wait(client, config.label, actors[config.label], sequence))
            last_done[config.label] = time.time()
    return latencies, idle


def _ms(value: float) -> str:
    return f"{value:,.1f}"


def run() -> Section:
    from app.config import get_settings

    project_ms = get_settings().worker_poll_ms
    configs = [
        Config("baseline", "Dramatiq `RedisBroker`, default timeout", BASELINE_TIMEOUT_MS),
        Config(PROJECT, "project `WakingRedisBroker` (`WORKER_POLL_MS`)", project_ms),
    ]
    client = redis.Redis.from_url(REDIS_URL, client_name=SENDER_NAME)
    client.flushdb()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes = [_start_worker(config) for config in configs]
        _wait_ready(client, configs, processes)
        latencies, idle = _measure(client, configs)
    finally:
        for process in processes:
            _stop_worker(process)
        client.flushdb()
        client.close()

    figures: dict[str, float] = {}
    rows: list[list[str]] = []
    for config in configs:
        samples = latencies[config.label]
        cuts = percentiles(samples, PERCENTILES)
        rate, commands = idle[config.label]
        for point, value in cuts.items():
            figures[f"{config.label}_p{point}_ms"] = value
        figures[f"{config.label}_max_ms"] = max(samples)
        figures[f"{config.label}_idle_commands_per_s"] = rate
        seen = ", ".join(f"{name} {count}" for name, count in commands.most_common())
        rows.append(
            [
                config.description,
                f"{config.timeout_ms:,}",
                *(_ms(cuts[point]) for point in PERCENTILES),
                _ms(max(samples)),
                f"{rate:.1f}",
                seen or "none",
            ]
        )
    median_ratio = figures["baseline_p50_ms"] / figures["project_p50_ms"]
    p99_ratio = figures["baseline_p99_ms"] / figures["project_p99_ms"]
    baseline_rate = figures["baseline_idle_commands_per_s"]
    rate_ratio = figures["project_idle_commands_per_s"] / baseline_rate if baseline_rate else float("inf")
    figures |= {"median_ratio": median_ratio, "p99_ratio": p99_ratio, "idle_commands_ratio": rate_ratio}

    results = table(
        [
            "Configuration",
            "worker_timeout (ms)",
            *(f"p{point} (ms)" for point in PERCENTILES),
            "max (ms)",
            "idle Redis commands/s",
            f"commands in {IDLE_WINDOW_S:.0f} s idle",
        ],
        rows,
        align="lrrrrrrl",
    )
    ratios = table(
        ["Ratio", "Value"],
        [
            ["median start latency, baseline / project", f"{median_ratio:.1f}x"],
            ["p99 start latency, baseline / project", f"{p99_ratio:.1f}x"],
            ["idle Redis commands per second, project / baseline", f"{rate_ratio:.1f}x"],
        ],
        align="lr",
    )
    body = f"""\
The time from `actor.send()` to the first line of the actor's body, on an idle queue.
Two worker processes, `dramatiq.Worker(broker, worker_timeout=T, worker_threads=1)` with one
queue each, run side by side: the baseline on Dramatiq's `RedisBroker` with its default
worker timeout, the project on its `WakingRedisBroker` with `WORKER_POLL_MS` ({project_ms} ms
in this run, read through `app.config`), whose idle consumer waits on a wake-up channel
that every send publishes to and polls every timeout (at most twice a second). The sender alternates between them
and sends a worker its next message only once it has been idle for {IDLE_GAP_S:.1f} s or more
(plus up to {GAP_JITTER_S:.1f} s at random), so that its poll back-off has grown to its maximum.
The send time is taken just before `send()`, the start time by the actor itself; both
come from the same machine's wall clock. {MESSAGES} messages per configuration, after one
warm-up message each (with so few samples, p99 is close to the maximum).

Waking costs a subscription, not more polling. Before any message is sent, with the
back-off at its maximum, Redis `MONITOR` counts the commands sent by each worker's own
connections for {IDLE_WINDOW_S:.0f} s (an idle worker polls its queue and its delay queue;
the server's global counters would also count its other clients).

{results}

{ratios}
"""
    return Section(
        title="Idle job start latency: the waking broker against Dramatiq's poll (Redis)", body=body, figures=figures
    )


if __name__ == "__main__":
    run_alone(run, {"worker": lambda label, timeout_ms: serve(label, int(timeout_ms))})
