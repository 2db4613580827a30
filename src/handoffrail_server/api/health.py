"""Liveness, readiness and metrics (root routes). Never leaks versions, hosts or errors."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable
from typing import cast

from fastapi import APIRouter, Request
from sqlalchemy import func, select, text
from starlette.responses import JSONResponse, Response

from handoffrail_server.api.deps import app_state
from handoffrail_server.api.problems import problem
from handoffrail_server.db.models import Packet
from handoffrail_server.observability import metrics
from handoffrail_server.packets.lifecycle import ACTIVE
from handoffrail_server.webhooks import repository as webhook_repository

router = APIRouter(tags=["health"])

READY_TIMEOUT_SECONDS = 2.0


@router.get("/health")
@router.get("/healthz", include_in_schema=False)
@router.get("/api/v1/health", include_in_schema=False)
async def health() -> dict[str, str]:
    """Liveness: the process answers. Touches no dependency."""
    return {"status": "ok", "service": "handoffrail"}


async def _database_ok(request: Request) -> bool:
    state = app_state(request)
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with state.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except Exception:  # any failure means not ready; the reason is not for the caller
        return False
    return True


async def _redis_status(request: Request) -> str:
    state = app_state(request)
    if state.redis is None:
        return "not_configured"
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await cast(Awaitable[bool], state.redis.ping())
    except Exception:  # Redis is optional: report, never fail readiness on it
        return "unavailable"
    return "ok"


@router.get("/ready")
@router.get("/api/v1/health/ready", include_in_schema=False)
async def ready(request: Request) -> JSONResponse:
    """Readiness: database round-trip (503 when it fails) and Redis ping, short timeouts."""
    state = app_state(request)
    database, redis = await asyncio.gather(_database_ok(request), _redis_status(request))
    body = {
        "status": "ready" if database else "not_ready",
        "service": "handoffrail",
        "db": database,
        "database": "ok" if database else "unavailable",
        "redis": redis,
        "rate_limit": state.limiter.backend if state.limiter is not None else "off",
    }
    return JSONResponse(body, status_code=200 if database else 503)


async def _refresh_gauges(request: Request) -> None:
    state = app_state(request)
    pool = state.engine.pool
    checked_out = getattr(pool, "checkedout", None)
    size = getattr(pool, "size", None)
    if callable(checked_out):
        metrics.DB_POOL_CHECKED_OUT.set(checked_out())
    if callable(size):
        metrics.DB_POOL_SIZE.set(size())
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with state.engine.connect() as connection:
                statuses = [status.value for status in ACTIVE]
                query = select(func.count()).select_from(Packet).where(Packet.status.in_(statuses))
                metrics.ACTIVE_PACKETS.set((await connection.execute(query)).scalar_one())
            # The webhook outbox lives in the database: its gauges are read here too, so the
            # API's /metrics has them wherever `handoffrail worker` runs (its own container,
            # without a port of its own).
            async with state.sessions() as session:
                depth, age, dead = await webhook_repository.queue_stats(session, state.clock.now())
            metrics.WEBHOOK_QUEUE_DEPTH.set(depth)
            metrics.WEBHOOK_QUEUE_AGE.set(age)
            metrics.WEBHOOK_DLQ_SIZE.set(dead)
    except Exception:  # the gauges keep their last values when the database is away
        return


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text; needs `Authorization: Bearer <HR_METRICS_TOKEN>` when that is set."""
    token = app_state(request).settings.metrics_token
    if token is not None:
        supplied = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            return problem(401, "metrics.unauthorized", "Unauthorized", "Metrics need a token")
    await _refresh_gauges(request)
    payload, content_type = metrics.render()
    return Response(payload, media_type=content_type)
