"""`transient()`: a row object built without attribute events behaves like `Model(**values)`."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from handoffrail_server.db.base import Base
from handoffrail_server.db.models import PacketEvent
from handoffrail_server.db.rows import insert_rows, transient, values

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _event_values() -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "tenant_id": "t1",
        "packet_id": uuid.uuid4(),
        "event_type": "created",
        "actor": "agent:a",
        "to_status": "created",
        "details": {"status": "created"},
        "created_at": NOW,
    }


def test_a_transient_row_reads_and_writes_like_a_constructed_one() -> None:
    given = _event_values()
    built = transient(PacketEvent, **given)
    constructed = PacketEvent(**given)

    assert inspect(built).transient
    assert values(built) == values(constructed)
    assert built.from_status is None  # unset reads as None, as after the constructor
    built.actor = "agent:b"  # still an ordinary mapped object
    assert built.actor == "agent:b"


def test_an_unknown_attribute_is_refused_as_the_constructor_would() -> None:
    with pytest.raises(TypeError, match="no column attribute 'nope'"):
        transient(PacketEvent, nope=1)


def test_a_transient_row_inserts_through_core_and_through_the_session() -> None:
    async def scenario() -> list[tuple[str, str]]:
        engine = create_async_engine("sqlite+aiosqlite://")
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with sessions.begin() as session:
            await insert_rows(session, transient(PacketEvent, **_event_values()))
            added = transient(PacketEvent, **{**_event_values(), "actor": "agent:added"})
            session.add(added)
        async with sessions() as session:
            rows = (await session.execute(select(PacketEvent.actor, PacketEvent.tenant_id))).all()
        await engine.dispose()
        return sorted((actor, tenant) for actor, tenant in rows)

    assert asyncio.run(scenario()) == [("agent:a", "t1"), ("agent:added", "t1")]
