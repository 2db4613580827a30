"""PostgreSQL units of work for the raw-path tests (test_fast_path*.py): a migrated database,
a small engine's sessions, and a tenant or webhook endpoints to write under."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handoffrail_server.db import migrations
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import Tenant, WebhookEndpoint
from handoffrail_server.db.uow import unit_of_work


@pytest.fixture
def migrated_pg(postgres_url: str) -> str:
    migrations.upgrade(postgres_url)
    return postgres_url


@pytest.fixture
async def sessions(migrated_pg: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    postgres_url = migrated_pg
    engine = create_engine(postgres_url, pool_size=2, max_overflow=0)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def pg_tenant(sessions: async_sessionmaker[AsyncSession]) -> str:
    """A new tenant's id."""
    tenant_id = f"t-{uuid.uuid4().hex[:8]}"
    async with unit_of_work(sessions) as session:
        now = datetime.now(UTC)
        session.add(Tenant(id=tenant_id, name=tenant_id, created_at=now, updated_at=now))
    return tenant_id


async def subscribe(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, *hooks: list[str]
) -> None:
    """Active webhook endpoints `<tenant>-hook-<n>`, the n-th subscribed to `hooks[n]`."""
    now = datetime.now(UTC)
    async with unit_of_work(sessions) as session:
        for index, events in enumerate(hooks):
            session.add(
                WebhookEndpoint(
                    id=f"{tenant_id}-hook-{index}",
                    tenant_id=tenant_id,
                    url="https://example.com/hook",
                    events=events,
                    secret_encrypted="x",
                    active=True,
                    created_at=now,
                    updated_at=now,
                )
            )
