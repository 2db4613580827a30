"""Mounts every feature's router under /api/v1."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from handoffrail_server.api.deps import reject_nul
from handoffrail_server.audit.router import router as audit_router
from handoffrail_server.keys.router import router as keys_router
from handoffrail_server.limits.router import router as limits_router
from handoffrail_server.packets.router import router as packets_router
from handoffrail_server.schema_registry.router import router as schemas_router
from handoffrail_server.tenants.router import router as tenants_router
from handoffrail_server.webhooks.router import router as webhooks_router

API_PREFIX = "/api/v1"


def build_api_router() -> APIRouter:
    """The /api/v1 router with every feature mounted."""
    # NUL checks run first on every route: PostgreSQL would answer them with a 500.
    router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(reject_nul)])
    features = (
        packets_router,
        keys_router,
        tenants_router,
        schemas_router,
        audit_router,
        limits_router,
        webhooks_router,
    )
    for feature in features:
        router.include_router(feature)
    return router
