"""Storage of usage counters and the agent registry. Flushes, never commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Integer, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db import fast
from handoffrail_server.db.models import Agent, ApiKey, Packet, Tenant, TenantUsage


def _insert(session: AsyncSession) -> Any:
    """The dialect's INSERT construct (both offer `on_conflict_do_*` with the same signature)."""
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


_ADD_HANDOFFS_SQL = (
    "INSERT INTO tenant_usage (tenant_id, day, handoffs) VALUES ($1, $2, $3) "
    "ON CONFLICT (tenant_id, day) DO UPDATE SET handoffs = tenant_usage.handoffs + $3 "
    "WHERE tenant_usage.handoffs + $3 <= $4 RETURNING tenant_usage.handoffs"
)


@cache
def _add_handoffs_statement(dialect: str) -> Any:
    """Built once per dialect (a hot path: every packet create)."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    count = bindparam("count", type_=Integer)
    statement = insert(TenantUsage).values(
        tenant_id=bindparam("tenant_id"), day=bindparam("day"), handoffs=count
    )
    return statement.on_conflict_do_update(
        index_elements=[TenantUsage.tenant_id, TenantUsage.day],
        set_={"handoffs": TenantUsage.handoffs + count},
        where=TenantUsage.handoffs + count <= bindparam("limit", type_=Integer),
    ).returning(TenantUsage.handoffs)


async def add_handoffs(
    session: AsyncSession, tenant_id: str, day: str, count: int, limit: int
) -> int | None:
    """Atomically add `count` to today's counter unless that passes `limit`.

    One `INSERT ... ON CONFLICT DO UPDATE ... WHERE` statement: concurrent callers serialise on
    the row, and the guard is evaluated on the newest value, so the limit is never overshot.
    Returns the new total, or None when the limit would be passed.
    """
    if count > limit:
        return None
    driver = await fast.connection(session)
    if driver is not None:
        async with fast.translated(session):
            value = await driver.fetchval(_ADD_HANDOFFS_SQL, tenant_id, day, count, limit)
        return int(value) if value is not None else None
    statement = _add_handoffs_statement(session.get_bind().dialect.name)
    parameters = {"tenant_id": tenant_id, "day": day, "count": count, "limit": limit}
    result = await session.execute(statement, parameters)
    value = result.scalar_one_or_none()
    return int(value) if value is not None else None


async def handoffs_on(session: AsyncSession, tenant_id: str, day: str) -> int:
    """Today's counter (0 when absent)."""
    result = await session.execute(
        select(TenantUsage.handoffs).where(
            TenantUsage.tenant_id == tenant_id, TenantUsage.day == day
        )
    )
    return int(result.scalar_one_or_none() or 0)


async def packets_created_since(session: AsyncSession, tenant_id: str, since: datetime) -> int:
    """Packets a tenant created since `since` (usage display for unlimited tiers)."""
    result = await session.execute(
        select(func.count())
        .select_from(Packet)
        .where(Packet.tenant_id == tenant_id, Packet.created_at >= since)
    )
    return int(result.scalar_one())


async def active_key_count(session: AsyncSession, tenant_id: str) -> int:
    """Keys of a tenant that are not revoked."""
    result = await session.execute(
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None))
    )
    return int(result.scalar_one())


async def agent_count(session: AsyncSession, tenant_id: str) -> int:
    """Agents registered for a tenant."""
    result = await session.execute(
        select(func.count()).select_from(Agent).where(Agent.tenant_id == tenant_id)
    )
    return int(result.scalar_one())


async def known_agents(
    session: AsyncSession, tenant_id: str, agent_ids: Sequence[str]
) -> dict[str, Agent]:
    """The registered agents among `agent_ids`."""
    result = await session.execute(
        select(Agent).where(Agent.tenant_id == tenant_id, Agent.agent_id.in_(list(agent_ids)))
    )
    return {agent.agent_id: agent for agent in result.scalars()}


async def lock_tenant(session: AsyncSession, tenant_id: str) -> None:
    """Serialise registrations of new agents of one tenant (row lock on PostgreSQL).

    FOR NO KEY UPDATE: it does not block the FOR KEY SHARE locks that foreign-key checks of
    concurrent inserts (packets, usage rows) take on the tenant row, so it cannot deadlock them.
    """
    query = select(Tenant.id).where(Tenant.id == tenant_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(key_share=True)
    await session.execute(query)


async def register_agent(
    session: AsyncSession,
    tenant_id: str,
    agent_id: str,
    name: str,
    framework: str | None,
    now: datetime,
) -> None:
    """Insert an agent row (no-op if another request just did)."""
    insert = _insert(session)
    statement = (
        insert(Agent)
        .values(
            tenant_id=tenant_id,
            agent_id=agent_id,
            name=name[:256],
            framework=framework[:256] if framework else None,
            first_seen_at=now,
            last_seen_at=now,
        )
        .on_conflict_do_nothing(index_elements=[Agent.tenant_id, Agent.agent_id])
    )
    await session.execute(statement)


async def touch_agent(
    session: AsyncSession, tenant_id: str, agent_id: str, now: datetime, stale_before: datetime
) -> None:
    """Move `last_seen_at` forward, at most once per staleness window (avoids a hot row)."""
    await session.execute(
        update(Agent)
        .where(
            Agent.tenant_id == tenant_id,
            Agent.agent_id == agent_id,
            Agent.last_seen_at < stale_before,
        )
        .values(last_seen_at=now)
    )


async def list_agents(
    session: AsyncSession, tenant_id: str, *, limit: int, offset: int
) -> tuple[list[Agent], int]:
    """Agents of a tenant, most recently seen first, with the total."""
    total = await agent_count(session, tenant_id)
    result = await session.execute(
        select(Agent)
        .where(Agent.tenant_id == tenant_id)
        .order_by(Agent.last_seen_at.desc(), Agent.agent_id)
        .limit(limit)
        .offset(offset)
    )
    return list(result.scalars()), total
