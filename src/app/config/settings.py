"""The one typed settings object, read from the environment and an optional `.env`.

Every field is documented in README.md ("Configuration"); keep the two in step.
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

import msgspec
from dotenv import dotenv_values

#: Secret keys that ship in examples and must never guard a real deployment.
WELL_KNOWN_SECRETS = frozenset({"", "change-me", "changeme", "secret", "dev", "development", "insecure"})


class ConfigurationError(RuntimeError):
    """The environment describes a configuration the service refuses to start with."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    app_env: Literal["development", "production", "test"] = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str = ""
    var_dir: str = "var"
    secret_key: str = ""

    database_url: str = ""
    database_pool_size: int = 10
    database_max_overflow: int = 10
    database_echo: bool = False

    redis_url: str = ""
    redis_namespace: str = "app"
    broker_url: str = ""

    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    cors_origins: str = ""

    worker_threads: int = 8
    worker_poll_ms: int = 100
    worker_heartbeat_seconds: float = 5.0
    worker_stale_seconds: float = 20.0

    diagnostics_enabled: bool | None = None

    access_token_minutes: int = 15
    refresh_token_days: int = 30
    session_days: int = 14
    email_token_minutes: int = 60
    verification_token_hours: int = 48
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    password_hash_threads: int = 4

    login_failures_per_window: int = 5
    login_window_seconds: int = 300
    registrations_per_hour: int = 20
    forgot_password_per_hour: int = 5

    smtp_host: str = ""
    smtp_port: int = 587
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = True
    smtp_tls: bool = False
    smtp_timeout_seconds: float = 10.0
    mail_from: str = "Jobs <no-reply@localhost>"
    smtp_breaker_failures: int = 5
    smtp_breaker_reset_seconds: float = 30.0
    mail_lease_seconds: float = 120.0
    mail_retry_min_seconds: float = 30.0
    mail_retry_max_seconds: float = 3600.0
    mail_give_up_hours: float = 72.0

    artifact_dir: str = ""
    max_active_tasks: int = 20
    task_max_attempts: int = 3
    task_resend_seconds: int = 60
    task_stale_seconds: int = 60
    task_retention_days: int = 30
    task_progress_interval_ms: int = 100

    oidc_issuer: str = ""
    oidc_audience: str = ""

    sse_heartbeat_seconds: float = 15.0
    sse_max_streams_per_user: int = 10
    sse_slow_client_seconds: float = 30.0
    event_retention_hours: int = 72

    @property
    def services_mode(self) -> bool:
        """True when the service talks to real servers (Postgres and/or Redis)."""
        return bool(self.database_url or self.redis_url)

    @property
    def embedded_workers(self) -> bool:
        """Without Redis the broker is in memory, so workers must live in the web process."""
        return not self.redis_url

    @property
    def job_broker_url(self) -> str:
        """Where jobs go: BROKER_URL (amqp:// for RabbitMQ) or, by default, Redis."""
        return self.broker_url or self.redis_url

    @property
    def diagnostics_on(self) -> bool:
        if self.diagnostics_enabled is None:
            return self.app_env != "production"
        return self.diagnostics_enabled

    @property
    def var_path(self) -> Path:
        return Path(self.var_dir).resolve()

    @property
    def artifact_path(self) -> Path:
        return Path(self.artifact_dir).resolve() if self.artifact_dir else self.var_path / "artifacts"

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL with the async driver filled in; a SQLite file under var/ when unset."""
        url = self.database_url or f"sqlite:///{self.var_path / 'app.db'}"
        for plain, driver in (
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def json_logs(self) -> bool:
        if self.log_format == "auto":
            return self.app_env == "production"
        return self.log_format == "json"

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")


def _environment(env_file: Path) -> dict[str, str]:
    """The process environment over `.env` (the environment wins), keyed by field name."""
    merged: dict[str, str] = {}
    if env_file.is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    fields = set(Settings.__struct_fields__)
    return {key.lower(): value for key, value in merged.items() if key.lower() in fields}


def _embedded_secret(var_path: Path) -> str:
    """A random key made once and kept under var/, so sessions survive restarts."""
    path = var_path / "secret_key"
    if not path.exists():
        var_path.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def load_settings(env_file: Path = Path(".env")) -> Settings:
    """Read and check the settings; raise ConfigurationError with a clear message."""
    try:
        settings = msgspec.convert(_environment(env_file), Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"Invalid configuration: {exc}") from exc
    if settings.broker_url and not settings.redis_url:
        raise ConfigurationError(
            "BROKER_URL needs REDIS_URL as well: live events, sessions and worker heartbeats use Redis."
        )
    if settings.broker_url and not settings.broker_url.startswith(("amqp://", "amqps://", "redis://", "rediss://")):
        raise ConfigurationError("BROKER_URL must be an amqp:// (RabbitMQ) or redis:// URL.")
    if settings.secret_key.strip().lower() in WELL_KNOWN_SECRETS:
        if settings.services_mode:
            raise ConfigurationError(
                "SECRET_KEY is missing or a well-known value. With DATABASE_URL or REDIS_URL set the "
                "service runs against real servers and needs its own secret: set SECRET_KEY to a long "
                'random string, e.g. the output of: python3 -c "import secrets; print(secrets.token_urlsafe(48))"'
            )
        settings = msgspec.structs.replace(settings, secret_key=_embedded_secret(settings.var_path))
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return load_settings()
