"""HTTP routes of usage and the agent registry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from handoffrail_server.api.deps import Caller, Session, State, tenant_limits
from handoffrail_server.limits import service

router = APIRouter(tags=["limits"])


@router.get("/usage")
async def usage(request: Request, state: State, session: Session, caller: Caller) -> dict[str, Any]:
    """The caller's tier, limits and today's usage ("3 of 5 handoffs used")."""
    limits = tenant_limits(request)
    assert limits is not None  # set by the Caller dependency
    return await service.usage(session, state.clock, limits)


@router.get("/agents")
async def list_agents(
    session: Session,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> dict[str, Any]:
    """Agents seen in the tenant's packets, most recently seen first."""
    return await service.list_agents(session, caller.tenant_id, limit=limit, offset=offset)
