"""Storage of API keys and tenants' operator flag lookups. Flushes, never commits."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db import fast, fast_sqlite
from handoffrail_server.db.models import ApiKey

# The key and its tenant in one query, written once for both drivers.
_PRINCIPAL_FIELDS = (
    "api_key.id",
    "api_key.key_prefix",
    "api_key.tenant_id",
    "api_key.role",
    "api_key.is_operator",
    "api_key.revoked_at",
    "tenant.is_operator AS tenant_is_operator",
    "tenant.tier",
    "tenant.handoffs_per_day",
    "tenant.max_api_keys",
    "tenant.deleted_at",
)
#: result column names, in order (`tenant_is_operator`, not `is_operator` twice)
_PRINCIPAL_COLUMNS = tuple(
    field.rsplit(" ", 1)[-1].rsplit(".", 1)[-1] for field in _PRINCIPAL_FIELDS
)
_PRINCIPAL_SQL = (
    f"SELECT {', '.join(_PRINCIPAL_FIELDS)} "  # noqa: S608  # nosec B608 - fixed identifiers, bound values
    "FROM api_key JOIN tenant ON tenant.id = api_key.tenant_id WHERE api_key.key_hash = $1"
)
_SQLITE_PRINCIPAL_SQL = _PRINCIPAL_SQL.replace("$1", "?")


async def principal_row(session: AsyncSession, key_hash: str) -> Any:
    """The key with this hash joined to its tenant (one round trip), revoked or not.

    Attribute access by column name (`row.tier`) on either backend."""
    driver = await fast.connection(session, begin=False)
    if driver is None:
        # SQLite: one aiosqlite call, before the unit's transaction when it has none yet; the
        # columns are text, integers and timestamps only compared with None, so no result
        # processing is needed
        rows = await fast_sqlite.read_outside(session, _SQLITE_PRINCIPAL_SQL, (key_hash,))
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
