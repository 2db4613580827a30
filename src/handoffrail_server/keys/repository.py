"""Storage of API keys and tenants' operator flag lookups. Flushes, never commits."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db.models import ApiKey, Tenant

# Built once: the per-request key lookup skips statement construction and ORM loading.
_PRINCIPAL = (
    select(
        ApiKey.id,
        ApiKey.key_prefix,
        ApiKey.tenant_id,
        ApiKey.role,
        ApiKey.is_operator,
        ApiKey.revoked_at,
        Tenant.is_operator.label("tenant_is_operator"),
        Tenant.tier,
        Tenant.handoffs_per_day,
        Tenant.max_api_keys,
        Tenant.deleted_at,
    )
    .join(Tenant, Tenant.id == ApiKey.tenant_id)
    .where(ApiKey.key_hash == bindparam("key_hash"))
)


async def principal_row(session: AsyncSession, key_hash: str) -> Any:
    """The key with this hash joined to its tenant (one round trip), revoked or not."""
    result = await session.execute(_PRINCIPAL, {"key_hash": key_hash})
    return result.one_or_none()


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
