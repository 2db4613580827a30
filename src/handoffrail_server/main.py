"""Application factory: `create_app(settings)` wires lifespan, middleware, routers and errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine

from handoffrail_server import __version__
from handoffrail_server.api import health
from handoffrail_server.api.deps import AppState
from handoffrail_server.api.problems import install_problem_handlers
from handoffrail_server.api.router import include_api
from handoffrail_server.clock import Clock, SystemClock
from handoffrail_server.dashboard.router import router as dashboard_router
from handoffrail_server.db import group_commit, migrations
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.infra.redis import create_redis
from handoffrail_server.keys import service as keys_service
from handoffrail_server.keys.cache import PrincipalCache, PrincipalListener
from handoffrail_server.limits.ratelimit import RateLimiter
from handoffrail_server.observability.edge import EdgeMiddleware
from handoffrail_server.observability.logging import configure_logging
from handoffrail_server.observability.runtime import (
    freeze_startup_objects,
    native_telemetry,
    young_threshold,
)
from handoffrail_server.observability.sentry import init_sentry
from handoffrail_server.packets import recent
from handoffrail_server.packets.deadlines import expire_due
from handoffrail_server.realtime.broker import Broker
from handoffrail_server.realtime.router import router as realtime_router
from handoffrail_server.settings import Settings, get_settings

log = structlog.get_logger(__name__)

#: hard cap on any request body unless a tier allows more; tier limits are enforced per tenant
MAX_BODY_BYTES = 1024 * 1024 + 4096
#: at shutdown, how long batches of cancelled requests get to be cancelled in the database
#: before the pool closes (within the 5 s a Gunicorn worker keeps: infra/serving.py)
SETTLE_SECONDS = 3.0


def body_cap(settings: Settings) -> int:
    """The edge's cap on any request body: 1 MiB (+ slack), or the largest tier's packet size
    when `HR_TIER_QUOTAS` raises one above it (else that tier's larger packets could never
    arrive)."""
    largest = max(quotas.max_packet_size for quotas in settings.tiers.values())
    return max(MAX_BODY_BYTES, largest + 4096)


class SchemaNotAtHead(RuntimeError):
    """The database is behind the code's newest revision (staging/production refuse to start;
    a database ahead of the code, migrated by a newer release, is accepted with a warning)."""


async def _expiry_loop(state: AppState, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            async with unit_of_work(state.sessions) as session:
                count = await expire_due(
                    session, state.clock, ttl_seconds=state.settings.packet_ttl_seconds
                )
            if count:
                log.info("packets.expired", count=count)
        except Exception as exc:  # keep the loop alive; the next tick retries
            log.warning("packets.expiry_failed", error=type(exc).__name__)


def _principal_listener(settings: Settings, engine: AsyncEngine) -> PrincipalListener | None:
    """The principal cache and its listener, when they can be kept right (keys/cache.py)."""
    if (
        engine.dialect.name != "postgresql"
        or settings.auth_cache_seconds <= 0
        or settings.db_statement_cache_size == 0  # PgBouncer in transaction mode: no LISTEN
    ):
        return None
    return PrincipalListener(engine, PrincipalCache(settings.auth_cache_seconds))


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """Build the ASGI application for `settings` (read from the environment when omitted)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, json_logs=not settings.is_development)
    engine = create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        statement_cache_size=settings.db_statement_cache_size,
        pre_ping=settings.db_pool_pre_ping,
        echo=settings.db_echo,
        group_commit=settings.db_group_commit,
    )
    if engine.dialect.name == "postgresql":
        recent.enable(engine, settings.recent_packets)
    state = AppState(
        settings=settings,
        engine=engine,
        sessions=create_sessionmaker(engine),
        clock=clock or SystemClock(),
        redis=create_redis(settings.redis_url),
        limiter=RateLimiter(settings.redis_url, prefix=settings.redis_prefix),
    )
    state.broker = Broker(state.redis, prefix=settings.redis_prefix)
    listener = _principal_listener(settings, engine)
    state.principal_listener = listener
    state.principals = listener.cache if listener is not None else None
    if settings.sentry_dsn is not None:
        init_sentry(settings.sentry_dsn.get_secret_value(), settings.environment.value, __version__)

    async def _check_schema_and_bootstrap() -> None:
        if not settings.is_development:
            current = await migrations.current_revision(engine)
            head = migrations.head_revision()
            found = migrations.schema_state(current, head, migrations.known_revisions())
            if found is migrations.SchemaState.BEHIND:
                raise SchemaNotAtHead(
                    f"database is at revision {current or 'none'}, code expects {head}: "
                    "run `handoffrail migrate up` before starting the server"
                )
            if found is migrations.SchemaState.AHEAD:
                # a newer release migrated: a rolling deploy or an application rollback
                # (docs/rollback.md); expand-then-contract migrations keep this schema usable
                log.warning("schema.ahead_of_code", database_revision=current, code_head=head)
        if settings.bootstrap_api_key is not None:
            async with unit_of_work(state.sessions) as session:
                await keys_service.bootstrap(
                    session,
                    state.clock,
                    plain=settings.bootstrap_api_key.get_secret_value(),
                    tier=settings.tier_default,
                )

    async def _close_clients() -> None:
        # Requests the server cancelled as its shutdown timed out may have left batches on
        # their way: cancel them in the database before the pool closes (else a statement
        # waiting on a lock runs on, and commits, after the process is gone).
        try:
            async with asyncio.timeout(SETTLE_SECONDS):
                await group_commit.stop(engine)
        except TimeoutError:
            log.warning("server.batches_unsettled")
        if listener is not None:
            await listener.stop()
        if state.broker is not None:
            await state.broker.stop()
        await engine.dispose()
        if state.redis is not None:
            await state.redis.aclose()
        if state.limiter is not None:
            await state.limiter.close()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await _check_schema_and_bootstrap()
        except BaseException:
            await _close_clients()
            raise
        assert state.broker is not None
        state.broker.start()
        if listener is not None:
            listener.start()
        expiry = None
        if settings.expiry_interval_seconds > 0:
            expiry = asyncio.create_task(_expiry_loop(state, settings.expiry_interval_seconds))
        log.info("server.started", environment=settings.environment.value)
        freeze_startup_objects()
        try:
            with young_threshold(settings.gc_threshold):
                yield
        finally:
            if expiry is not None:
                expiry.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await expiry
            await _close_clients()
            log.info("server.stopped")

    show_docs = settings.docs_enabled
    app = FastAPI(
        telemetry=native_telemetry(os.environ),
        title="HandoffRail",
        version=__version__,
        summary="Session-continuity middleware for multi-agent AI workflows",
        lifespan=lifespan,
        debug=settings.debug,
        docs_url="/docs" if show_docs else None,
        redoc_url="/redoc" if show_docs else None,
        openapi_url="/openapi.json" if show_docs else None,
    )
    app.state.hr = state
    install_problem_handlers(app)
    include_api(app, fast_lanes=settings.fast_lanes)
    app.include_router(health.router)
    app.include_router(realtime_router)
    app.include_router(dashboard_router)
    if settings.cors_origins:
        wildcard = "*" in settings.cors_origins  # development only (the settings refuse it else)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            # `*` is never combined with credentials (CONTRACT.md §10.9).
            allow_credentials=not wildcard,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["X-API-Key", "Content-Type", "X-Request-ID", "Last-Event-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(EdgeMiddleware, max_bytes=body_cap(settings))
    return app
