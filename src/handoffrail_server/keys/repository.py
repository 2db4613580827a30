"""Storage of API keys and tenants' operator flag lookups. Flushes, never commits."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db.models import ApiKey


async def by_hash(session: AsyncSession, key_hash: str) -> ApiKey | None:
    """The key row with this hash, revoked or not."""
    result = await session.execute(select(ApiKey).where(ApiKey.key_hash == key_hash))
    return result.scalar_one_or_none()


async def by_id(session: AsyncSession, key_id: str) -> ApiKey | None:
    """The key row with this id."""
    return await session.get(ApiKey, key_id)


async def list_for_tenant(session: AsyncSession, tenant_id: str) -> list[ApiKey]:
    """Every key of a tenant, oldest first."""
    result = await session.execute(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at, ApiKey.id)
    )
    return list(result.scalars())


async def count_all(session: AsyncSession) -> int:
    """Number of keys in the database (bootstrap runs only on zero)."""
    result = await session.execute(select(func.count()).select_from(ApiKey))
    return int(result.scalar_one())


async def add(session: AsyncSession, key: ApiKey) -> ApiKey:
    """Insert a key row."""
    session.add(key)
    await session.flush()
    return key
