"""Storage of registered schemas. Flushes, never commits."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db.models import PacketSchema


async def get(session: AsyncSession, tenant_id: str, schema_id: str) -> PacketSchema | None:
    """The schema if it belongs to the tenant."""
    result = await session.execute(
        select(PacketSchema).where(
            PacketSchema.id == schema_id, PacketSchema.tenant_id == tenant_id
        )
    )
    return result.scalar_one_or_none()


async def by_name_version(
    session: AsyncSession, tenant_id: str, name: str, version: int
) -> PacketSchema | None:
    """The schema with this name and version in the tenant."""
    result = await session.execute(
        select(PacketSchema).where(
            PacketSchema.tenant_id == tenant_id,
            PacketSchema.name == name,
            PacketSchema.version == version,
        )
    )
    return result.scalar_one_or_none()


async def page(
    session: AsyncSession, tenant_id: str, *, limit: int, offset: int
) -> tuple[list[PacketSchema], int]:
    """Schemas newest first with the total count."""
    total = int(
        (
            await session.execute(
                select(func.count())
                .select_from(PacketSchema)
                .where(PacketSchema.tenant_id == tenant_id)
            )
        ).scalar_one()
    )
    rows = await session.execute(
        select(PacketSchema)
        .where(PacketSchema.tenant_id == tenant_id)
        .order_by(PacketSchema.created_at.desc(), PacketSchema.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows.scalars()), total


async def add(session: AsyncSession, schema: PacketSchema) -> PacketSchema:
    """Insert a schema row."""
    session.add(schema)
    await session.flush()
    return schema
