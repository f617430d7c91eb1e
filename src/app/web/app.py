"""The Litestar application factory: `litestar --app app.web.app:create_app` (LITESTAR_APP)."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from pathlib import Path
from typing import Any

import redis.asyncio
import structlog
from advanced_alchemy.extensions.litestar import (
    AlembicAsyncConfig,
    AsyncSessionConfig,
    SQLAlchemyAsyncConfig,
    SQLAlchemyPlugin,
)
from litestar import Litestar
from litestar.config.compression import CompressionConfig
from litestar.config.cors import CORSConfig
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.logging.config import LoggingConfig, StructLoggingConfig
from litestar.middleware import DefineMiddleware
from litestar.middleware.logging import LoggingMiddlewareConfig
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.flash import FlashConfig, FlashPlugin
from litestar.plugins.htmx import HTMXPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.plugins.problem_details import ProblemDetailsPlugin
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.plugins.structlog import StructlogConfig, StructlogPlugin
from litestar.stores.file import FileStore
from litestar.stores.memory import MemoryStore
from litestar.stores.redis import RedisStore
from litestar.stores.registry import StoreRegistry
from litestar.template.config import TemplateConfig
from litestar_granian import GranianPlugin

from app.config import Settings, get_settings
from app.config.logging import level, stdlib_formatter, structlog_processors
from app.domain.accounts.passwords import Passwords
from app.domain.database import create_engine, create_read_engine, session_factory
from app.domain.tasks.artifacts import LocalArtifacts
from app.web.api.access_tokens import AccessTokensController
from app.web.api.account_lifecycle import AccountController
from app.web.api.accounts import AuthController, MeController
from app.web.api.admin import AdminUsersController
from app.web.api.admin_tasks import AdminTasksController
from app.web.api.audit import AdminAuditController, MyAuditController
from app.web.api.diagnostics import DiagnosticsController
from app.web.api.events import EventsController
from app.web.api.health import HealthController
from app.web.api.notifications import AdminNotificationsController, NotificationsController
from app.web.api.oidc import IdentitiesController, OIDCIdentities, OIDCVerifier
from app.web.api.openapi import complete_when_built
from app.web.api.schedules import SchedulesController
from app.web.api.sessions import SessionsController
from app.web.api.task_logs import TaskLogsController
from app.web.api.tasks import TaskKindsController, TasksController
from app.web.api.webhooks import TaskWebhookDeliveriesController, WebhookSecretController
from app.web.cli import OperatorCLIPlugin
from app.web.embedded_workers import EmbeddedWorkersPlugin
from app.web.http import dependencies
from app.web.http.access_tokens import TokenIndex
from app.web.http.assets import StaticAssets, serve_static
from app.web.http.auth import AccessTokens, AuthMiddleware, session_config
from app.web.http.channels import ChannelsPublisher, channels_plugin
from app.web.http.credentials import CredentialCache, CredentialsPlugin
from app.web.http.draining import Draining
from app.web.http.errors import exception_handlers, problem_details_config
from app.web.http.input_guards import MAX_BODY_BYTES, GuardedRequest, RefuseNul
from app.web.http.limits import Limiter
from app.web.http.lingering import linger_after_answers
from app.web.http.metrics import MetricsRefresher
from app.web.http.proxies import TrustedProxies
from app.web.http.request_id import RequestIdMiddleware
from app.web.http.security import SecurityHeadersMiddleware
from app.web.http.sign_ins import SignInUses
from app.web.pages import PAGE_CONTROLLERS

TEMPLATES = Path(__file__).parent / "templates"
API_VERSION = "1.0.0"
QUIET_PATHS = ["/health", "/metrics", "/static"]


class MetricsController(PrometheusController):
    """Prometheus text at /metrics; not part of the API document."""

    include_in_schema = False


def migrations_path() -> str:
    """`migrations/` at the repository root (the working directory in a container)."""
    beside_source = Path(__file__).resolve().parents[3] / "migrations"
    return str(beside_source if beside_source.is_dir() else Path("migrations").resolve())


def alchemy_config(settings: Settings) -> SQLAlchemyAsyncConfig:
    return SQLAlchemyAsyncConfig(
        engine_instance=create_engine(settings),
        # No advanced-alchemy cache: its listener's check at every commit made an engine copy (2% of a
        # submission's CPU, py-spy).
        session_config=AsyncSessionConfig(expire_on_commit=False, info={"enable_cache_listener": False}),
        before_send_handler="autocommit",
        enable_file_object_listener=False,  # no FileObject columns: skip inspecting every flush
        alembic_config=AlembicAsyncConfig(
            script_location=migrations_path(),
            version_table_name="alembic_version",
            # SQLite reflects some portable types (GUID) as others, which type comparison
            # would report as drift; Postgres, the production database, compares types too.
            compare_type=not settings.is_sqlite,
        ),
    )


def _openapi(assets: StaticAssets) -> OpenAPIConfig:
    swagger = "vendor/swagger-ui/"
    return OpenAPIConfig(
        title="Jobs API",
        version=API_VERSION,
        description="Start background jobs, follow them live, and read notifications.",
        path="/schema",
        render_plugins=[
            SwaggerRenderPlugin(
                path="/",
                js_url=assets.url(swagger + "swagger-ui-bundle.js"),
                css_url=assets.url(swagger + "swagger-ui.css"),
                standalone_preset_js_url=assets.url(swagger + "swagger-ui-standalone-preset.js"),
                favicon="",
            ),
            JsonRenderPlugin(path="/openapi.json"),
        ],
        use_handler_docstrings=True,
        components=Components(
            security_schemes={
                "BearerToken": SecurityScheme(
                    type="http", scheme="bearer", bearer_format="JWT", description="POST /api/v1/auth/login"
                )
            }
        ),
    )


def _structlog(settings: Settings) -> StructlogPlugin:
    return StructlogPlugin(
        config=StructlogConfig(
            structlog_logging_config=StructLoggingConfig(
                processors=structlog_processors(settings),
                logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
                wrapper_class=structlog.make_filtering_bound_logger(level(settings)),
                standard_lib_logging_config=LoggingConfig(
                    formatters={"standard": stdlib_formatter(settings)},
                    root={"handlers": ["queue_listener"], "level": logging.getLevelName(level(settings))},
                ),
                log_exceptions="debug",
                pretty_print_tty=False,
            ),
            # Its lines are INFO: below that level the middleware would only build and drop them (about 5%
            # of a submission's CPU), so it is left out.
            enable_middleware_logging=level(settings) <= logging.INFO,
            middleware_logging_config=LoggingMiddlewareConfig(
                exclude=QUIET_PATHS,
                exclude_opt_key="skip_logging",
                request_log_fields=["method", "path", "query"],
                response_log_fields=["status_code"],
            ),
        )
    )


async def announce_start() -> None:
    """One line once the app serves: which event loop runs it (uvloop where installed: app.web.serve)."""
    loop = asyncio.get_running_loop()
    structlog.get_logger("app.web").info("web.started", event_loop=f"{type(loop).__module__}.{type(loop).__name__}")


def tune_garbage_collector() -> None:
    """Fewer, cheaper collections in the web process (once it has started).

    With 1,000 live-event streams open, every few broadcasts met a full collection that
    held the event loop for about 250 ms (their delivery p50 went from about 230 to 500 ms;
    with the collector off there was none). What startup made is frozen out of every later
    collection, and the young generation is collected every 50,000 allocations instead of
    700, so full collections come far less often. Only reference cycles wait longer to go.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def store_registry(settings: Settings) -> StoreRegistry:
    """Sessions and abuse counters: Redis in services mode; embedded, sessions in files under var/."""
    if settings.redis_url:
        redis_store = RedisStore(redis.asyncio.Redis.from_url(settings.redis_url), namespace=settings.redis_namespace)
        return StoreRegistry(default_factory=redis_store.with_namespace)
    return StoreRegistry(
        {"sessions": FileStore(settings.var_path / "sessions", create_directories=True)},
        default_factory=lambda _name: MemoryStore(),
    )


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    dependencies.install()  # no task per dependency (see the module)
    # Imported here: it reads the settings and declares the broker for this process.
    from app.workers import broker, heartbeats
    from app.workers.brokers import WakingRedisBroker
    from app.workers.embedded import EmbeddedWorkers

    assets = StaticAssets()
    draining = Draining()
    channels = channels_plugin(settings)
    alchemy = alchemy_config(settings)
    sessions = session_factory(alchemy.get_engine())
    reads = create_read_engine(settings)  # hot single-statement reads: who is calling, task pages
    stores = store_registry(settings)
    tokens = AccessTokens(settings)
    credentials = CredentialCache(reads, settings, channels, stores.get("sessions"))
    personal_tokens = TokenIndex(reads, sessions)
    sign_in_uses = SignInUses(sessions)
    passwords = Passwords(settings)
    limiter = Limiter.for_settings(settings)  # atomic counters, in the `limits` store's Redis namespace
    external = (
        OIDCIdentities(OIDCVerifier(settings.oidc_issuer, settings.oidc_audience), sessions)
        if settings.oidc_issuer
        else None
    )
    broker_clients = [broker.close_loop_client] if isinstance(broker, WakingRedisBroker) else []
    embedded = [EmbeddedWorkersPlugin(EmbeddedWorkers(broker, settings), channels)] if settings.embedded_workers else []

    templates = TemplateConfig(
        directory=TEMPLATES,
        engine=JinjaTemplateEngine,
        engine_callback=lambda engine: engine.engine.globals.update(static_url=assets.url),
    )

    def constant(value: Any) -> Provide:
        return Provide(lambda: value, use_cache=True, sync_to_thread=False)

    app = Litestar(
        route_handlers=[
            *PAGE_CONTROLLERS,
            HealthController,
            EventsController,
            DiagnosticsController,
            AuthController,
            MeController,
            IdentitiesController,
            AccessTokensController,
            SessionsController,
            AccountController,
            AdminUsersController,
            AdminTasksController,
            AdminAuditController,
            MyAuditController,
            TaskKindsController,
            TasksController,
            TaskLogsController,
            TaskWebhookDeliveriesController,
            WebhookSecretController,
            SchedulesController,
            NotificationsController,
            AdminNotificationsController,
            MetricsController,
            serve_static,
        ],
        dependencies={
            "settings": constant(settings),
            "broker": constant(broker),
            "heartbeats": constant(heartbeats),
            "assets": constant(assets),
            "channels": constant(channels),
            "sessions": constant(sessions),
            "reads": constant(reads),
            "passwords": constant(passwords),
            "tokens": constant(tokens),
            "credentials": constant(credentials),
            "access_tokens": constant(personal_tokens),
            "sign_in_uses": constant(sign_in_uses),
            "external_identities": constant(external),
            "limiter": constant(limiter),
            "publisher": constant(ChannelsPublisher(channels)),
            "artifacts": constant(LocalArtifacts(settings.artifact_path)),
            "draining": constant(draining),
        },
        state=State(
            {
                "settings": settings,
                "credentials": credentials,
                "access_tokens": personal_tokens,
                "sign_in_uses": sign_in_uses,
            }
        ),
        lifespan=[
            draining.lifespan,
            limiter.lifespan,
            MetricsRefresher(sessions, broker, settings.metrics_refresh_seconds).lifespan,
            personal_tokens.lifespan,
            sign_in_uses.lifespan,
        ],
        stores=stores,
        plugins=[
            _structlog(settings),
            SQLAlchemyPlugin(config=alchemy),
            channels,
            CredentialsPlugin(credentials),  # after `channels`: it listens for revocations on them
            ProblemDetailsPlugin(problem_details_config()),
            HTMXPlugin(),
            FlashPlugin(FlashConfig(template_config=templates)),
            GranianPlugin(),
            OperatorCLIPlugin(),
            *embedded,  # after `channels`: see EmbeddedWorkersPlugin
        ],
        middleware=[
            TrustedProxies(settings.trusted_proxy_networks, settings.trusted_proxy_header),  # first: the client
            RequestIdMiddleware(),
            SecurityHeadersMiddleware(https=settings.base_url.startswith("https://")),  # HSTS
            RefuseNul(),  # before anything reads the path, query, cookies or tokens
            PrometheusConfig(app_name="app", prefix="app", group_path=True, exclude=QUIET_PATHS).middleware,
            session_config(settings).middleware,
            DefineMiddleware(
                AuthMiddleware,
                credentials=credentials,
                tokens=tokens,
                personal_tokens=personal_tokens,
                sign_in_uses=sign_in_uses,
                external=external,
                exclude=QUIET_PATHS,
            ),
        ],
        csrf_config=CSRFConfig(
            secret=settings.secret_key,
            cookie_secure=settings.base_url.startswith("https://"),
            exclude=["/api/", *QUIET_PATHS, "/schema"],
        ),
        exception_handlers=exception_handlers(),
        request_class=GuardedRequest,  # JSON depth and NUL checked before a body is decoded
        request_max_body_size=MAX_BODY_BYTES,
        compression_config=CompressionConfig(backend="gzip", gzip_compress_level=6, exclude=["/api/v1/events"]),
        cors_config=CORSConfig(allow_origins=settings.cors_origin_list, allow_credentials=True)
        if settings.cors_origin_list
        else None,
        openapi_config=_openapi(assets),
        template_config=templates,
        debug=settings.app_env == "development" and settings.log_level.upper() == "DEBUG",
        on_startup=[tune_garbage_collector, announce_start],
        # The write engine too: advanced-alchemy's plugin disposes it only under its first state key
        # ("db_engine"); a second app in one process gets "db_engine_1" and kept its connections open.
        # And the broker's asyncio Redis client of this loop (app.workers.brokers.enqueue_from_loop).
        on_shutdown=[reads.dispose, alchemy.get_engine().dispose, *broker_clients],
    )
    # Not at start-up: `litestar schema openapi` builds the app without starting it (app.web.api.openapi).
    complete_when_built(app)
    linger_after_answers(app)  # outermost: it reads what an early answer (a 413, a 404) left unread
    return app
