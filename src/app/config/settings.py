"""The one typed settings object, read from the environment and an optional `.env`.

Every field is documented in README.md ("Configuration"); keep the two in step.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

import msgspec
from dotenv import dotenv_values

#: Secret keys that ship in examples and must never guard a real deployment.
WELL_KNOWN_SECRETS = frozenset({"", "change-me", "changeme", "secret", "dev", "development", "insecure"})
#: The shortest SECRET_KEY accepted, in bytes (UTF-8): 256 bits, the size of the HMAC-SHA256 keys it becomes.
MIN_SECRET_BYTES = 32


#: Abuse limits (app.web.http.limits): each must let at least one attempt through.
LIMITS = (
    "login_failures_per_window",
    "login_failures_per_account",
    "login_failures_per_address",
    "token_failures_per_address",
)


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
    #: Threads of the `mail` and `maintenance` queues (app.workers.queues): their own, so they never wait behind tasks.
    mail_worker_threads: int = 2
    maintenance_worker_threads: int = 2
    #: Sends wake idle Redis consumers at once (WakingRedisBroker): this only bounds delayed messages and lost wake-ups.
    worker_poll_ms: int = 1000
    worker_heartbeat_seconds: float = 1.0
    #: A worker silent this long is gone: /health/ready stops counting it and its tasks are handed back.
    worker_stale_seconds: float = 5.0
    #: Port of a `dramatiq` process group's Prometheus exporter (app.workers.metrics), on HOST; 0: none.
    #: One per group on a machine: the Procfile gives worker, mailer and housekeeper 9191, 9192 and 9193.
    worker_metrics_port: int = 0
    #: How often the web process reads the task counts and queue depths it exports on /metrics (seconds).
    metrics_refresh_seconds: float = 10.0

    diagnostics_enabled: bool | None = None

    access_token_minutes: int = 15
    #: How long a web process may trust what it remembers of a user's credentials without hearing a
    #: revocation (the backstop when an announcement is lost; announcements take effect at once).
    auth_cache_seconds: float = 60.0
    refresh_token_days: int = 30
    session_days: int = 14
    email_token_minutes: int = 60
    verification_token_hours: int = 48
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    password_hash_threads: int = 4

    login_failures_per_window: int = 5
    login_failures_per_account: int = 20
    login_failures_per_address: int = 50
    token_failures_per_address: int = 20
    login_window_seconds: int = 300
    registrations_per_hour: int = 20
    forgot_password_per_hour: int = 5
    verification_emails_per_hour: int = 5

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
    #: Tasks of one user running at once (keep it below the task threads, so others always get one).
    max_running_per_user: int = 4
    #: Per kind, tasks of one user running at once, as `kind=N,...` (e.g. `export=1`); within MAX_RUNNING_PER_USER.
    max_running_per_kind: str = ""
    task_max_attempts: int = 3
    #: A failed attempt's task waits this long before the next, doubling per attempt up to the maximum.
    task_retry_min_seconds: float = 2.0
    task_retry_max_seconds: float = 30.0
    task_resend_seconds: int = 60
    task_stale_seconds: int = 60
    task_retention_days: int = 30
    task_progress_interval_ms: int = 100

    #: Schedules (app.domain.schedules): how many one user may hold; the closest two runs of one may come.
    max_schedules_per_user: int = 20
    schedule_min_interval_seconds: int = 60

    #: Comma-separated addresses or CIDR blocks of reverse proxies whose TRUSTED_PROXY_HEADER names the client.
    trusted_proxies: str = ""
    trusted_proxy_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"

    oidc_issuer: str = ""
    oidc_audience: str = ""

    #: Webhooks (app.domain.webhooks): http:// allowed (local development, tests); hosts exempt from the
    #: private-address rule, exactly as written in URLs; the delays between tries (their count + 1 tries).
    webhook_allow_http: bool = False
    webhook_allowed_hosts: str = ""
    webhook_retry_seconds: str = "10,30,120,600,3600"
    webhook_connect_timeout_seconds: float = 5.0
    webhook_timeout_seconds: float = 10.0

    sse_heartbeat_seconds: float = 15.0
    sse_max_streams_per_user: int = 10
    sse_slow_client_seconds: float = 30.0
    event_retention_hours: int = 72
    #: Audit log rows (app.domain.audit) older than this are deleted by the hourly housekeeping job.
    audit_retention_days: int = 365

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
    def running_per_kind(self) -> dict[str, int]:
        """MAX_RUNNING_PER_KIND parsed; ValueError naming the entry that is not `kind=N` with N >= 1."""
        limits: dict[str, int] = {}
        for entry in filter(None, (part.strip() for part in self.max_running_per_kind.split(","))):
            kind, _, number = entry.partition("=")
            if not kind.strip() or not number.strip().isdigit() or int(number) < 1:
                raise ValueError(f"{entry!r} is not kind=N with N >= 1")
            limits[kind.strip()] = int(number)
        return limits

    @property
    def schedule_min_interval(self) -> timedelta:
        return timedelta(seconds=self.schedule_min_interval_seconds)

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        """WEBHOOK_RETRY_SECONDS parsed; ValueError for an entry that is not a number >= 0."""
        delays = tuple(float(part) for part in self.webhook_retry_seconds.split(",") if part.strip())
        if any(delay < 0 for delay in delays):
            raise ValueError("delays must not be negative")
        return delays

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
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """TRUSTED_PROXIES parsed; ValueError naming the entry that is no address or CIDR block."""
        return tuple(ipaddress.ip_network(entry.strip()) for entry in self.trusted_proxies.split(",") if entry.strip())

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
    """A random key (48 random bytes, 64 characters) made once and kept under var/, so sessions survive restarts.

    A file holding less than MIN_SECRET_BYTES (emptied or edited by hand) is replaced.
    """
    path = var_path / "secret_key"
    if not path.exists() or len(path.read_text().strip().encode()) < MIN_SECRET_BYTES:
        var_path.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _secret_problem(secret: str) -> str | None:
    """Why SECRET_KEY cannot guard a deployment (None: it can)."""
    if secret.strip().lower() in WELL_KNOWN_SECRETS:
        return "is missing or a well-known value"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return f"is shorter than {MIN_SECRET_BYTES} bytes"
    return None


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
    try:
        _ = settings.trusted_proxy_networks
    except ValueError as exc:
        raise ConfigurationError(
            f"TRUSTED_PROXIES must be comma-separated IP addresses or CIDR blocks (e.g. 10.0.0.0/8,::1): {exc}"
        ) from exc
    try:
        _ = settings.running_per_kind
    except ValueError as exc:
        raise ConfigurationError(f"MAX_RUNNING_PER_KIND must be kind=N pairs, e.g. export=1,demo=4: {exc}") from exc
    try:
        _ = settings.webhook_retry_delays
    except ValueError as exc:
        raise ConfigurationError(
            f"WEBHOOK_RETRY_SECONDS must be comma-separated seconds, e.g. 10,30,120: {exc}"
        ) from exc
    for name in ("worker_threads", "mail_worker_threads", "maintenance_worker_threads", "max_running_per_user"):
        if getattr(settings, name) < 1:
            raise ConfigurationError(f"{name.upper()} must be at least 1.")
    if not 0 < settings.task_retry_min_seconds <= settings.task_retry_max_seconds:
        raise ConfigurationError("TASK_RETRY_MIN_SECONDS must be above 0 and at most TASK_RETRY_MAX_SECONDS.")
    for limit in LIMITS:
        if getattr(settings, limit) < 1:
            raise ConfigurationError(f"{limit.upper()} must be at least 1 (0 would refuse everyone).")
    if problem := _secret_problem(settings.secret_key):
        unset = settings.secret_key.strip().lower() in WELL_KNOWN_SECRETS
        if settings.services_mode or not unset:  # embedded, an unset key is made; a weak one set is a mistake
            raise ConfigurationError(
                f"SECRET_KEY {problem}: "
                + ("with DATABASE_URL or REDIS_URL set the service needs its own secret; " if unset else "")
                + f"set it to a random string of at least {MIN_SECRET_BYTES} bytes, e.g. the output of: "
                'python3 -c "import secrets; print(secrets.token_urlsafe(48))"'
            )
        settings = msgspec.structs.replace(settings, secret_key=_embedded_secret(settings.var_path))
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once.

    Every entry point (`litestar ...` through the app factory, `dramatiq app.workers`,
    `periodiq app.workers`) reads its settings here first, so a refused configuration ends
    the process with its one-line reason on stderr (exit code 2), not a traceback.
    """
    try:
        return load_settings()
    except ConfigurationError as exc:
        sys.stderr.write(f"Configuration error: {exc}\n")
        raise SystemExit(2) from None
