"""Settings: read from the environment and .env, embedded vs services mode, secret handling.

Every test here sets the environment it reads (both modes' settings included), so the run's
TEST_MODE changes nothing: the module runs once, in the embedded run of `make test`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.config.logging import OneWriterAtATime
from app.config.settings import ConfigurationError, load_settings

pytestmark = pytest.mark.embedded

CLEAR = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "PORT", "VAR_DIR", "APP_ENV")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAR_DIR", str(tmp_path / "var"))
    return monkeypatch


def test_embedded_mode_makes_a_secret_once_and_keeps_it(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = load_settings(tmp_path / "missing.env")
    second = load_settings(tmp_path / "missing.env")
    assert not first.services_mode
    assert first.embedded_workers
    assert len(first.secret_key) >= 40
    assert first.secret_key == second.secret_key
    assert (tmp_path / "var" / "secret_key").stat().st_mode & 0o077 == 0
    assert first.sqlalchemy_url == f"sqlite+aiosqlite:///{tmp_path / 'var' / 'app.db'}"


@pytest.mark.parametrize("secret", [None, "", "change-me", "secret"])
def test_services_mode_refuses_a_missing_or_well_known_secret(
    env: pytest.MonkeyPatch, tmp_path: Path, secret: str | None
) -> None:
    env.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1/app")
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    if secret is not None:
        env.setenv("SECRET_KEY", secret)
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        load_settings(tmp_path / "missing.env")


def test_services_mode_with_a_secret(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("DATABASE_URL", "postgres://postgres@db:5432/app")
    env.setenv("REDIS_URL", "redis://cache:6379/0")
    env.setenv("SECRET_KEY", "x" * 48)
    settings = load_settings(tmp_path / "missing.env")
    assert settings.services_mode
    assert not settings.embedded_workers
    assert settings.sqlalchemy_url == "postgresql+asyncpg://postgres@db:5432/app"
    assert not (tmp_path / "var" / "secret_key").exists()


def test_dotenv_is_read_and_the_environment_wins(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=9001\nLOG_LEVEL=debug\nCORS_ORIGINS=https://a.example, https://b.example\n")
    env.setenv("LOG_LEVEL", "error")
    settings = load_settings(dotenv)
    assert settings.port == 9001
    assert settings.log_level == "error"
    assert settings.cors_origin_list == ["https://a.example", "https://b.example"]


def test_a_bad_value_is_a_clear_error(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("PORT", "eighty")
    with pytest.raises(ConfigurationError, match="port"):
        load_settings(tmp_path / "missing.env")


def test_task_retries_wait_a_doubling_backoff_within_its_settings(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from datetime import timedelta

    from app.domain.tasks.runner import backoff

    env.setenv("TASK_RETRY_MIN_SECONDS", "1.5")
    env.setenv("TASK_RETRY_MAX_SECONDS", "5")
    settings = load_settings(tmp_path / "missing.env")
    assert [backoff(settings, attempt) for attempt in (1, 2, 3, 4)] == [
        timedelta(seconds=seconds) for seconds in (1.5, 3, 5, 5)
    ]
    for low, high in (("0", "5"), ("-1", "5"), ("6", "5")):
        env.setenv("TASK_RETRY_MIN_SECONDS", low)
        env.setenv("TASK_RETRY_MAX_SECONDS", high)
        with pytest.raises(ConfigurationError, match="TASK_RETRY_MIN_SECONDS"):
            load_settings(tmp_path / "missing.env")


def test_every_setting_is_documented_in_the_readme() -> None:
    from app.config.settings import Settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name.upper() for name in Settings.__struct_fields__ if f"`{name.upper()}`" not in readme]
    assert not missing, f"README.md's configuration table lacks {missing}"


def test_broker_url_needs_redis_and_a_known_scheme(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("SECRET_KEY", "x" * 48)
    env.setenv("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        load_settings(tmp_path / "missing.env")
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    assert load_settings(tmp_path / "missing.env").job_broker_url.startswith("amqp://")
    env.setenv("BROKER_URL", "kafka://somewhere")
    with pytest.raises(ConfigurationError, match="BROKER_URL"):
        load_settings(tmp_path / "missing.env")


@pytest.mark.parametrize("secret", ["s" * 31, "é" * 15])  # 31 and 30 bytes
def test_a_secret_shorter_than_32_bytes_is_refused_in_either_mode(
    env: pytest.MonkeyPatch, tmp_path: Path, secret: str
) -> None:
    env.setenv("SECRET_KEY", secret)
    with pytest.raises(ConfigurationError, match="shorter than 32 bytes"):
        load_settings(tmp_path / "missing.env")  # embedded: a key that is set is used as it is, or refused
    env.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1/app")
    with pytest.raises(ConfigurationError, match="shorter than 32 bytes"):
        load_settings(tmp_path / "missing.env")
    env.setenv("SECRET_KEY", "s" * 32)
    assert load_settings(tmp_path / "missing.env").secret_key == "s" * 32


def test_a_short_embedded_secret_file_is_replaced(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secret_key").write_text("edited by hand\n")
    settings = load_settings(tmp_path / "missing.env")
    assert len(settings.secret_key.encode()) >= 32
    assert (tmp_path / "var" / "secret_key").read_text().strip() == settings.secret_key


ENTRY_POINTS = [
    ["litestar", "run", "--port", "1"],
    ["python", "-m", "app.web.serve"],  # the web app in services mode (Procfile, image)
    ["litestar", "database", "upgrade", "--no-prompt"],
    ["litestar", "users", "--help"],
    ["dramatiq", "app.workers", "--processes", "1", "--threads", "1"],
    ["periodiq", "app.workers"],
]


@pytest.mark.parametrize("secret", ["", "too-short"])
@pytest.mark.parametrize("command", ENTRY_POINTS, ids=lambda c: " ".join(c[:2]))
def test_every_entry_point_refuses_a_bad_secret_with_one_line_and_no_traceback(
    tmp_path: Path, command: list[str], secret: str
) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere",  # never reached: settings come first
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "SECRET_KEY": secret,
        "VAR_DIR": str(tmp_path / "var"),
        "LITESTAR_APP": "app.web.app:create_app",
    }
    binary = Path(sys.executable).parent / command[0]
    result = subprocess.run([str(binary), *command[1:]], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Configuration error: ")]
    assert len(errors) == 1, output
    assert "SECRET_KEY" in errors[0]
    assert "32 bytes" in errors[0]


def test_a_signal_handler_that_logs_during_a_write_waits_for_it_and_does_not_deadlock() -> None:
    """Dramatiq's SIGTERM handler logs, in the thread the signal interrupts, maybe in the middle of that
    thread's own write to the shared stream: its line must come after that write, whole, and neither
    wait for the lock the interrupted write holds (a deadlock: the worker never exited) nor cut into it."""
    events: list[tuple[str, str]] = []

    class Pipe:
        """stderr as a worker process has it: every write a message; the signal arrives inside the first."""

        def write(self, text: str) -> int:
            events.append(("begins", text))
            if len(events) == 1:
                signal.raise_signal(signal.SIGUSR1)  # Python runs its handler here, inside this write
            events.append(("ends", text))
            return len(text)

        def flush(self) -> None:
            events.append(("flush", ""))

        def isatty(self) -> bool:
            return False

    stream = OneWriterAtATime(Pipe())  # type: ignore[arg-type]
    previous = signal.signal(signal.SIGUSR1, lambda *_: stream.write("from the handler\n"))
    try:
        stream.write("a long message\n")
        stream.flush()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert events == [
        ("begins", "a long message\n"),
        ("ends", "a long message\n"),
        ("begins", "from the handler\n"),
        ("ends", "from the handler\n"),
        ("flush", ""),
    ]
