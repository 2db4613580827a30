"""Mounts every feature's router under /api/v1."""

from __future__ import annotations

from fastapi import APIRouter

from handoffrail_server.audit.router import router as audit_router
from handoffrail_server.keys.router import router as keys_router
from handoffrail_server.packets.router import router as packets_router
from handoffrail_server.schema_registry.router import router as schemas_router
from handoffrail_server.tenants.router import router as tenants_router

API_PREFIX = "/api/v1"


def build_api_router() -> APIRouter:
    """The /api/v1 router with every feature mounted."""
    router = APIRouter(prefix=API_PREFIX)
    for feature in (packets_router, keys_router, tenants_router, schemas_router, audit_router):
        router.include_router(feature)
    return router
