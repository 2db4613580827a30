"""HTTP routes of tenants (CONTRACT.md §5 Tenants). Operator for other tenants."""

from __future__ import annotations

from fastapi import APIRouter, Response

from handoffrail_server.api.deps import Caller, Session, State
from handoffrail_server.keys import service as keys
from handoffrail_server.keys.schemas import ApiKeyRead
from handoffrail_server.tenants import service
from handoffrail_server.tenants.schemas import TenantCreate, TenantRead, TenantUpdate

router = APIRouter(prefix="/tenants", tags=["tenants"])


@router.post("", status_code=201, response_model=TenantRead)
async def create_tenant(
    body: TenantCreate, state: State, session: Session, caller: Caller
) -> TenantRead:
    """Create a tenant (operator key)."""
    return await service.create(session, state.clock, caller, body)


@router.get("", response_model=list[TenantRead])
async def list_tenants(session: Session, caller: Caller) -> list[TenantRead]:
    """All tenants for the operator; one's own tenant otherwise."""
    return await service.list_visible(session, caller)


@router.get("/{tenant_id}", response_model=TenantRead)
async def get_tenant(tenant_id: str, session: Session, caller: Caller) -> TenantRead:
    """One tenant."""
    return await service.get(session, caller, tenant_id)


@router.patch("/{tenant_id}", response_model=TenantRead)
async def update_tenant(
    tenant_id: str, body: TenantUpdate, state: State, session: Session, caller: Caller
) -> TenantRead:
    """Rename a tenant, or change its tier and quotas (operator key)."""
    return await service.update(session, state.clock, caller, tenant_id, body)


@router.delete("/{tenant_id}", status_code=204)
async def delete_tenant(tenant_id: str, state: State, session: Session, caller: Caller) -> Response:
    """Soft-delete a tenant (operator key)."""
    await service.delete(session, state.clock, caller, tenant_id)
    return Response(status_code=204)


@router.get("/{tenant_id}/keys", response_model=list[ApiKeyRead])
async def list_tenant_keys(tenant_id: str, session: Session, caller: Caller) -> list[ApiKeyRead]:
    """Keys of a tenant (no plain keys)."""
    return await keys.list_for(session, caller, tenant_id)
