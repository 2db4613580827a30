"""Storage of tenants. Flushes, never commits."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db.models import Tenant


async def by_id(session: AsyncSession, tenant_id: str) -> Tenant | None:
    """The tenant row, deleted or not."""
    return await session.get(Tenant, tenant_id)


async def active_by_name(session: AsyncSession, name: str) -> Tenant | None:
    """The non-deleted tenant with this name."""
    result = await session.execute(
        select(Tenant).where(Tenant.name == name, Tenant.deleted_at.is_(None))
    )
    return result.scalar_one_or_none()


async def list_active(session: AsyncSession) -> list[Tenant]:
    """Every non-deleted tenant, oldest first."""
    result = await session.execute(
        select(Tenant).where(Tenant.deleted_at.is_(None)).order_by(Tenant.created_at, Tenant.id)
    )
    return list(result.scalars())


async def add(session: AsyncSession, tenant: Tenant) -> Tenant:
    """Insert a tenant row."""
    session.add(tenant)
    await session.flush()
    return tenant
