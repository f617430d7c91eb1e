"""`python -m app.supervisor [Procfile]`: run every process of a Procfile, and start again any that dies.

What `make run` uses in services mode instead of `honcho start`, which stops every
process (the web app included) as soon as one of them exits: here a worker or the
scheduler that dies (a crash, the OOM killer, `kill -9`) is logged and started again,
after a pause that doubles while it keeps dying at once (1 s, up to 30 s), and everything
else keeps running (what the dead one started and left running is killed first). Ctrl-C or
SIGTERM stops them all: SIGTERM to each process group, a wait until every process of each
group has ended (not only the shell of each line), and SIGKILL to what is left after
STOP_SECONDS.

Each line a process writes is printed with its name in front, as honcho does. Commands
run with `/bin/sh -c`, so the Procfile's `${VAR:-default}` works; the environment is
passed on, with the values of the `.env` beside the Procfile that it does not set, as
honcho did (the Procfile's `${WORKER_POLL_MS:-1000}` must see a value set only in `.env`).
The standard library and python-dotenv only: it must start when nothing else does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from dotenv import dotenv_values

#: After a process exits, it is started again after this long, doubling (up to the maximum) while it keeps dying.
RESTART_MIN_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
#: A process that ran this long before it died is started again after the shortest pause.
STEADY_SECONDS = 60.0
STOP_SECONDS = 10.0

_print_lock = threading.Lock()


def say(name: str, line: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    with _print_lock:
        sys.stdout.write(f"{stamp} {name:<12} | {line}\n")
        sys.stdout.flush()


def read_procfile(path: Path) -> list[tuple[str, str]]:
    """(name, command) of each `name: command` line; blank lines and `#` comments are skipped."""
    entries = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not name.strip() or not command.strip():
            raise SystemExit(f"{path}:{number}: not a `name: command` line")
        entries.append((name.strip(), command.strip()))
    return entries


@dataclass
class Child:
    name: str
    command: str
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    pause: float = RESTART_MIN_SECONDS
    due: float = 0.0  # when to start it again, after it died
    pumps: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", self.command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a signal reaches everything it started
        )
        self.started = time.monotonic()
        say("supervisor", f"started {self.name} (pid {self.process.pid}): {self.command}")
        pump = threading.Thread(target=self._pump, args=(self.process,), name=f"output-{self.name}", daemon=True)
        pump.start()
        self.pumps = [pump]

    def _pump(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            say(self.name, raw.decode(errors="replace").rstrip("\n"))

    def signal(self, signum: int) -> None:
        """`signum` to every process of its group, including those left after the shell of its line ended."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):  # every process of the group ended meanwhile
                os.killpg(self.process.pid, signum)

    def wait_stopped(self, deadline: float) -> bool:
        """Whether every process of its group ended by `deadline` (time.monotonic()).

        The Procfile line's shell ends as soon as its signal reaches it, while what it started
        (a Dramatiq CLI and its worker processes) may still be stopping: the group is over when
        the output pipe they all share is closed, so the pump ends (a process could only keep
        running unseen by closing its output, which none of ours does).
        """
        assert self.process is not None
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        for pump in self.pumps:
            pump.join(timeout=max(0.0, deadline - time.monotonic()))
        return not any(pump.is_alive() for pump in self.pumps)


class Supervisor:
    def __init__(self, entries: list[tuple[str, str]]) -> None:
        self.children = [Child(name, command) for name, command in entries]
        self.stopping = threading.Event()

    def run(self) -> int:
        for child in self.children:
            child.start()
        while not self.stopping.wait(0.2):
            now = time.monotonic()
            for child in self.children:
                self._look_after(child, now)
        return self._stop_all()

    def _look_after(self, child: Child, now: float) -> None:
        process = child.process
        if process is not None:
            code = process.poll()
            if code is None:
                return
            ran = now - child.started
            wait = RESTART_MIN_SECONDS if ran >= STEADY_SECONDS else child.pause
            child.pause = min(RESTART_MAX_SECONDS, wait * 2)
            child.due = now + wait
            child.signal(signal.SIGKILL)  # what it started and left running (a Dramatiq CLI killed, its workers not)
            child.process = None
            say("supervisor", f"{child.name} exited with code {code} after {ran:.0f} s; restarting in {wait:.0f} s")
            return
        if now >= child.due:
            child.start()

    def _stop_all(self) -> int:
        say("supervisor", "stopping every process")
        for child in self.children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for child in self.children:
            if child.process is None:
                continue
            if not child.wait_stopped(deadline):
                say("supervisor", f"{child.name} did not stop within {STOP_SECONDS:.0f} s: killing it")
                child.signal(signal.SIGKILL)
                child.process.wait()
                for pump in child.pumps:
                    pump.join(timeout=2)
            say("supervisor", f"{child.name} stopped (code {child.process.returncode})")
        return 0

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping.set()


def with_env_file(environ: dict[str, str], env_file: Path) -> dict[str, str]:
    """`environ`, plus the values of `env_file` (if it exists) for the names `environ` does not set."""
    merged = {name: value for name, value in dotenv_values(env_file).items() if value is not None}
    merged.update(environ)
    return merged


def main(argv: list[str]) -> int:
    procfile = Path(argv[1] if len(argv) > 1 else "Procfile")
    os.environ.update(with_env_file(dict(os.environ), procfile.parent / ".env"))
    supervisor = Supervisor(read_procfile(procfile))
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
