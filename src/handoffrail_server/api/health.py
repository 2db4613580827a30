"""Liveness and readiness (CONTRACT.md §5 root routes). Never leaks versions, hosts or errors."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from sqlalchemy import text
from starlette.responses import JSONResponse

from handoffrail_server.api.deps import app_state

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


@router.get("/ready")
@router.get("/api/v1/health/ready", include_in_schema=False)
async def ready(request: Request) -> JSONResponse:
    """Readiness: a database round-trip within a short timeout; 503 when it fails."""
    database = await _database_ok(request)
    body = {
        "status": "ready" if database else "not_ready",
        "service": "handoffrail",
        "db": database,
        "database": "ok" if database else "unavailable",
        "redis": "not_configured",
    }
    return JSONResponse(body, status_code=200 if database else 503)
