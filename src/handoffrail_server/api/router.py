"""Mounts every feature's router under /api/v1."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from handoffrail_server.api.deps import reject_nul
from handoffrail_server.api.lanes import install_lanes
from handoffrail_server.audit.router import router as audit_router
from handoffrail_server.keys.router import router as keys_router
from handoffrail_server.limits.router import router as limits_router
from handoffrail_server.packets.router import LANES as PACKET_LANES
from handoffrail_server.packets.router import router as packets_router
from handoffrail_server.schema_registry.router import router as schemas_router
from handoffrail_server.tenants.router import router as tenants_router
from handoffrail_server.webhooks.router import router as webhooks_router

API_PREFIX = "/api/v1"


def include_api(app: FastAPI, *, fast_lanes: bool = True) -> None:
    """Mount every feature's router under /api/v1, each directly on the app.

    One level of inclusion, not a /api/v1 router holding the features: FastAPI re-checks the
    route version of an included router and everything below it on every request, so a nested
    tree costs a walk over all its routes per request (issue 10, round 3). Packets come first:
    they take most of the traffic. With `fast_lanes`, the ordinary requests of the hottest
    packet routes are served in front of them (`api/lanes.py`).
    """
    # NUL checks run first on every route: PostgreSQL would answer them with a 500.
    guard = [Depends(reject_nul)]
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
        app.include_router(feature, prefix=API_PREFIX, dependencies=guard)
    if fast_lanes:
        install_lanes(app, PACKET_LANES)
