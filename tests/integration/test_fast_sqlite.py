"""Raw SQLite inserts (db/fast_sqlite.py) write exactly what SQLAlchemy writes, inside the
session's transaction and savepoints, and fail with SQLAlchemy's error classes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handoffrail_server.db import fast_sqlite
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import Packet, PacketEvent, PacketTag, Tenant
from handoffrail_server.db.rows import insert_rows, transient
from handoffrail_server.db.uow import unit_of_work

NOW = datetime(2026, 11, 26, 4, 30, 1, 123456, tzinfo=UTC)


@pytest.fixture
async def sessions(migrated_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    if not migrated_url.startswith("sqlite"):
        pytest.skip("SQLite only: PostgreSQL has db/fast.py")
    engine = create_engine(migrated_url)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as session:
            session.add(Tenant(id="t1", name="t1", created_at=NOW, updated_at=NOW))
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


def _packet(**overrides: Any) -> Packet:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "tenant_id": "t1",
        "version": "1.0.0",
        "status": "created",
        "priority": "high",
        "priority_rank": 2,
        "source_agent_id": "a",
        "target_agent_id": "b",
        "packet_metadata": {"priority": "high", "tags": ["x"], "n": 2**70, "u": "Ünï ☃"},
        "context": {"summary": "s", "conversation_state": []},
        "decisions": [],
        "actions": {"completed": [], "pending": [], "blocked": []},
        "dependencies": [],
        "search_text": "s",
        "row_version": 1,
        "created_at": NOW,
        "updated_at": NOW,
        **overrides,
    }
    return transient(Packet, **values)


async def _row(session: AsyncSession, packet_id: uuid.UUID) -> dict[str, Any]:
    result = await session.execute(
        text("SELECT * FROM packet WHERE id = :id"), {"id": packet_id.hex}
    )
    row = dict(result.mappings().one())
    row.pop("id")
    return row


async def _insert(sessions: async_sessionmaker[AsyncSession], *objects: Any) -> None:
    async with unit_of_work(sessions) as session:
        driver = await fast_sqlite.connection(session)
        for obj in objects:
            await fast_sqlite.insert(session, driver, [obj])


async def _insert_then_fail(sessions: async_sessionmaker[AsyncSession], packet: Packet) -> None:
    async with unit_of_work(sessions) as session:
        driver = await fast_sqlite.connection(session)
        await fast_sqlite.insert(session, driver, [packet])
        raise RuntimeError("the request failed")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_raw_rows_are_what_sqlalchemy_writes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    raw, orm = _packet(), _packet()
    async with unit_of_work(sessions) as session:
        driver = await fast_sqlite.connection(session)
        await fast_sqlite.insert(session, driver, [raw])
        await insert_rows(session, orm)
        tags = [transient(PacketTag, packet_id=raw.id, tag=t, tenant_id="t1") for t in "ab"]
        await fast_sqlite.insert(session, driver, tags)
    async with unit_of_work(sessions) as session:
        assert await _row(session, raw.id) == await _row(session, orm.id)
        loaded = await session.get(Packet, raw.id)
        assert loaded is not None
        assert loaded.packet_metadata == raw.packet_metadata
        assert loaded.created_at.replace(tzinfo=UTC) == NOW
        count = await session.execute(text("SELECT count(*) FROM packet_tag"))
        assert count.scalar_one() == 2


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_raw_inserts_roll_back_with_the_transaction_and_savepoints(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    kept, undone, failed = _packet(), _packet(), _packet()
    async with unit_of_work(sessions) as session:
        driver = await fast_sqlite.connection(session)
        await fast_sqlite.insert(session, driver, [kept])
        async with session.begin_nested() as savepoint:
            # asked again inside the savepoint, as write_change does: that emits the SAVEPOINT
            inner = await fast_sqlite.connection(session)
            await fast_sqlite.insert(session, inner, [undone])
            await savepoint.rollback()
    with pytest.raises(RuntimeError):
        await _insert_then_fail(sessions, failed)
    async with unit_of_work(sessions) as session:
        ids = (await session.execute(text("SELECT id FROM packet"))).scalars().all()
    assert ids == [kept.id.hex]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_driver_errors_surface_as_sqlalchemy_errors(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    packet = _packet()
    event = transient(
        PacketEvent,
        id=uuid.uuid4(),
        tenant_id="t1",
        packet_id=uuid.uuid4(),  # no such packet
        event_type="created",
        actor="agent:a",
        to_status="created",
        created_at=NOW,
    )
    with pytest.raises(sa_exc.IntegrityError):
        await _insert(sessions, packet, packet)  # same primary key twice
    with pytest.raises(sa_exc.IntegrityError):
        await _insert(sessions, event)  # no such packet: foreign key
