"""Tenant use cases. Only the operator manages other tenants; a tenant admin may read its own
tenant and rename it, but not change its tier or quotas."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.audit import service as audit
from handoffrail_server.clock import Clock
from handoffrail_server.db.models import Tenant
from handoffrail_server.errors import Conflict, NotFound, PermissionDenied
from handoffrail_server.tenants import repository
from handoffrail_server.tenants.schemas import TenantCreate, TenantRead, TenantUpdate

if TYPE_CHECKING:
    from handoffrail_server.keys.service import Principal

DEFAULT_TENANT_ID = "default"
DEFAULT_TENANT_NAME = "Default Tenant"


class TenantNotFound(NotFound):
    """No such (non-deleted) tenant visible to the caller."""

    code = "tenant.not_found"


class TenantNameTaken(Conflict):
    """Another active tenant has this name."""

    code = "tenant.name_taken"


class TenantProtected(Conflict):
    """The operator tenant cannot be deleted."""

    code = "tenant.protected"


class OperatorOnly(PermissionDenied):
    """Only the operator key may do this."""

    code = "auth.operator_required"


def to_read(tenant: Tenant) -> TenantRead:
    """Wire shape of a tenant row."""
    return TenantRead(
        id=tenant.id,
        name=tenant.name,
        tier=tenant.tier,
        handoffs_per_day=tenant.handoffs_per_day,
        max_api_keys=tenant.max_api_keys,
        hitl_fallback=tenant.hitl_fallback,
        created_at=tenant.created_at,
        updated_at=tenant.updated_at,
        deleted_at=tenant.deleted_at,
    )


async def get_active(session: AsyncSession, tenant_id: str) -> Tenant | None:
    """The tenant if it exists and is not deleted."""
    tenant = await repository.by_id(session, tenant_id)
    if tenant is None or tenant.deleted_at is not None:
        return None
    return tenant


async def by_name(session: AsyncSession, name: str) -> Tenant | None:
    """The active tenant with this name."""
    return await repository.active_by_name(session, name)


async def create_row(
    session: AsyncSession,
    clock: Clock,
    *,
    name: str,
    tier: str,
    handoffs_per_day: int | None = None,
    max_api_keys: int | None = None,
    tenant_id: str | None = None,
    is_operator: bool = False,
    hitl_fallback: str = "expire",
) -> Tenant:
    """Insert a tenant; a duplicate active name is a conflict."""
    if await repository.active_by_name(session, name) is not None:
        raise TenantNameTaken(f"Tenant name '{name}' already exists")
    now = clock.now()
    tenant = Tenant(
        id=tenant_id or str(uuid.uuid4()),
        name=name,
        tier=tier,
        handoffs_per_day=handoffs_per_day,
        max_api_keys=max_api_keys,
        is_operator=is_operator,
        hitl_fallback=hitl_fallback,
        created_at=now,
        updated_at=now,
    )
    try:
        async with session.begin_nested():
            await repository.add(session, tenant)
    except IntegrityError:
        raise TenantNameTaken(f"Tenant name '{name}' already exists") from None
    return tenant


async def ensure_default(session: AsyncSession, clock: Clock, *, tier: str) -> Tenant:
    """The default (operator) tenant, created on first use."""
    tenant = await repository.by_id(session, DEFAULT_TENANT_ID)
    if tenant is not None:
        return tenant
    try:
        return await create_row(
            session,
            clock,
            name=DEFAULT_TENANT_NAME,
            tier=tier,
            tenant_id=DEFAULT_TENANT_ID,
            is_operator=True,
        )
    except TenantNameTaken:
        existing = await repository.by_id(session, DEFAULT_TENANT_ID)
        if existing is None:
            raise
        return existing


def _require_operator(principal: Principal, action: str) -> None:
    if not principal.is_operator:
        raise OperatorOnly(f"{action} needs the operator key")


async def create(
    session: AsyncSession, clock: Clock, principal: Principal, body: TenantCreate
) -> TenantRead:
    """Create a tenant (operator only)."""
    _require_operator(principal, "Creating tenants")
    tenant = await create_row(
        session,
        clock,
        name=body.name,
        tier=body.tier,
        handoffs_per_day=body.handoffs_per_day,
        max_api_keys=body.max_api_keys,
        hitl_fallback=body.hitl_fallback,
    )
    await audit.record_admin(
        session,
        clock,
        tenant_id=tenant.id,
        actor=f"key:{principal.key_id}",
        action="tenant.created",
        resource_type="tenant",
        resource_id=tenant.id,
        details={"tier": tenant.tier},
    )
    return to_read(tenant)


async def list_visible(session: AsyncSession, principal: Principal) -> list[TenantRead]:
    """All tenants for the operator; a tenant admin sees only its own."""
    if principal.is_operator:
        return [to_read(tenant) for tenant in await repository.list_active(session)]
    own = await get_active(session, principal.tenant_id)
    return [to_read(own)] if own else []


async def _visible(session: AsyncSession, principal: Principal, tenant_id: str) -> Tenant:
    tenant = await get_active(session, tenant_id) if principal.can_manage(tenant_id) else None
    if tenant is None:
        raise TenantNotFound(f"Tenant {tenant_id} not found")
    return tenant


async def get(session: AsyncSession, principal: Principal, tenant_id: str) -> TenantRead:
    """One tenant the caller may see."""
    return to_read(await _visible(session, principal, tenant_id))


async def update(
    session: AsyncSession,
    clock: Clock,
    principal: Principal,
    tenant_id: str,
    body: TenantUpdate,
) -> TenantRead:
    """Rename (own tenant) or change tier/quotas (operator only)."""
    tenant = await _visible(session, principal, tenant_id)
    changes = body.model_dump(exclude_unset=True)
    before = {key: getattr(tenant, key) for key in sorted(changes) if hasattr(tenant, key)}
    if {"tier", "handoffs_per_day", "max_api_keys"} & changes.keys():
        _require_operator(principal, "Changing a tenant's tier or quotas")
    new_name = changes.get("name")
    if new_name and new_name != tenant.name:
        other = await repository.active_by_name(session, new_name)
        if other is not None and other.id != tenant.id:
            raise TenantNameTaken(f"Tenant name '{new_name}' already exists")
        tenant.name = new_name
    if changes.get("tier"):
        tenant.tier = changes["tier"]
    if "handoffs_per_day" in changes:
        tenant.handoffs_per_day = changes["handoffs_per_day"]
    if "max_api_keys" in changes:
        tenant.max_api_keys = changes["max_api_keys"]
    if changes.get("hitl_fallback"):
        tenant.hitl_fallback = changes["hitl_fallback"]
    tenant.updated_at = clock.now()
    await session.flush()
    await audit.record_admin(
        session,
        clock,
        tenant_id=tenant.id,
        actor=f"key:{principal.key_id}",
        action="tenant.tier_changed" if "tier" in changes else "tenant.updated",
        resource_type="tenant",
        resource_id=tenant.id,
        details={"before": before, "after": {key: changes[key] for key in sorted(changes)}},
    )
    return to_read(tenant)


async def delete(session: AsyncSession, clock: Clock, principal: Principal, tenant_id: str) -> None:
    """Soft-delete a tenant (operator only); its keys stop working at once."""
    _require_operator(principal, "Deleting tenants")
    tenant = await _visible(session, principal, tenant_id)
    if tenant.is_operator:
        raise TenantProtected("The operator tenant cannot be deleted")
    now = clock.now()
    tenant.deleted_at = now
    tenant.updated_at = now
    await session.flush()
    await audit.record_admin(
        session,
        clock,
        tenant_id=tenant.id,
        actor=f"key:{principal.key_id}",
        action="tenant.deleted",
        resource_type="tenant",
        resource_id=tenant.id,
    )


async def set_tier(session: AsyncSession, clock: Clock, tenant_id: str, tier: str) -> TenantRead:
    """CLI: change a tenant's tier."""
    tenant = await get_active(session, tenant_id) or await by_name(session, tenant_id)
    if tenant is None:
        raise TenantNotFound(f"Tenant {tenant_id} not found")
    before = tenant.tier
    tenant.tier = tier
    tenant.updated_at = clock.now()
    await session.flush()
    await audit.record_admin(
        session,
        clock,
        tenant_id=tenant.id,
        actor="cli",
        action="tenant.tier_changed",
        resource_type="tenant",
        resource_id=tenant.id,
        details={"before": {"tier": before}, "after": {"tier": tier}},
    )
    return to_read(tenant)


async def list_all(session: AsyncSession) -> list[TenantRead]:
    """CLI: every active tenant."""
    return [to_read(tenant) for tenant in await repository.list_active(session)]
