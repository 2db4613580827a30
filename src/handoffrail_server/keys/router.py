"""HTTP routes of API keys (CONTRACT.md §5 API keys). Admin role; tenant-scoped."""

from __future__ import annotations

from fastapi import APIRouter, Response

from handoffrail_server.api.deps import Caller, Session, State
from handoffrail_server.api.roles import Role
from handoffrail_server.keys import service
from handoffrail_server.keys.schemas import ApiKeyCreate, ApiKeyRead

router = APIRouter(prefix="/keys", tags=["keys"])


@router.post("", status_code=201, response_model=ApiKeyRead)
async def create_key(
    body: ApiKeyCreate, state: State, session: Session, caller: Caller
) -> ApiKeyRead:
    """Create a key; the plain key is in this answer only."""
    return await service.create(
        session,
        state.clock,
        caller,
        name=body.name,
        role=Role(body.role),
        tenant_id=body.tenant_id,
        tiers=state.settings.tiers,
    )


@router.get("", response_model=list[ApiKeyRead])
async def list_keys(session: Session, caller: Caller) -> list[ApiKeyRead]:
    """Keys of the caller's tenant (never the plain keys)."""
    return await service.list_for(session, caller, caller.tenant_id)


@router.delete("/{key_id}", status_code=204)
async def revoke_key(key_id: str, state: State, session: Session, caller: Caller) -> Response:
    """Revoke a key at once."""
    await service.revoke(session, state.clock, caller, key_id)
    return Response(status_code=204)


@router.post("/{key_id}/rotate", status_code=201, response_model=ApiKeyRead)
async def rotate_key(key_id: str, state: State, session: Session, caller: Caller) -> ApiKeyRead:
    """Revoke a key and return its replacement (plain key in this answer only)."""
    return await service.rotate(session, state.clock, caller, key_id)
