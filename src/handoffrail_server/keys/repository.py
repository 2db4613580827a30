"""Storage of API keys and tenants' operator flag lookups. Flushes, never commits."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db import fast, fast_sqlite
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


_PRINCIPAL_SQL = (
    "SELECT api_key.id, api_key.key_prefix, api_key.tenant_id, api_key.role, "
    "api_key.is_operator, api_key.revoked_at, tenant.is_operator AS tenant_is_operator, "
    "tenant.tier, tenant.handoffs_per_day, tenant.max_api_keys, tenant.deleted_at "
    "FROM api_key JOIN tenant ON tenant.id = api_key.tenant_id WHERE api_key.key_hash = $1"
)


_SQLITE_PRINCIPAL_SQL = _PRINCIPAL_SQL.replace("$1", "?")
_PRINCIPAL_COLUMNS = (
    "id",
    "key_prefix",
    "tenant_id",
    "role",
    "is_operator",
    "revoked_at",
    "tenant_is_operator",
    "tier",
    "handoffs_per_day",
    "max_api_keys",
    "deleted_at",
)


async def principal_row(session: AsyncSession, key_hash: str) -> Any:
    """The key with this hash joined to its tenant (one round trip), revoked or not.

    Attribute access by column name (`row.tier`) on either backend."""
    driver = await fast.connection(session)
    if driver is None:
        lite = await fast_sqlite.connection(session)
        if lite is None:
            return (await session.execute(_PRINCIPAL, {"key_hash": key_hash})).one_or_none()
        # SQLite: one aiosqlite call; the columns are text, integers and timestamps only
        # compared with None, so no result processing is needed
        async with fast_sqlite.translated():
            rows = await lite.execute_fetchall(_SQLITE_PRINCIPAL_SQL, (key_hash,))
        return (
            SimpleNamespace(**dict(zip(_PRINCIPAL_COLUMNS, rows[0], strict=True))) if rows else None
        )
    async with fast.translated(session):
        record = await driver.fetchrow(_PRINCIPAL_SQL, key_hash)
    return None if record is None else SimpleNamespace(**dict(record))


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
