"""`transient()`: a row object built without attribute events behaves like `Model(**values)`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

from handoffrail_server.db.base import Base
from handoffrail_server.db.models import PacketEvent
from handoffrail_server.db.rows import insert_rows, replaced, transient, values

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


@contextmanager
def _stored_event(*expired: str) -> Iterator[PacketEvent]:
    """A stored history row whose `expired` attributes the ORM must load again."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as session:
        stored = PacketEvent(**_event_values())
        session.add(stored)
        session.commit()
        session.expire(stored, list(expired))
        yield stored


def test_values_reads_an_unloaded_attribute_of_a_stored_row_through_the_orm() -> None:
    with _stored_event("actor", "details") as stored:
        assert "actor" not in stored.__dict__
        read = values(stored)  # loads them, where `__dict__` alone would say None
    assert read["actor"] == "agent:a"
    assert read["details"] == {"status": "created"}
    assert "from_status" not in read  # None: left to its default


def test_values_of_a_transient_row_leave_out_what_was_never_set() -> None:
    given = _event_values()
    del given["details"]
    assert "details" not in values(transient(PacketEvent, **given))
    assert values(transient(PacketEvent, **given))["actor"] == "agent:a"


def test_replaced_copies_every_column_and_applies_the_changes() -> None:
    given = _event_values()
    del given["details"]
    original = transient(PacketEvent, **given)
    copy = replaced(original, actor="agent:b")
    assert copy is not original
    assert (copy.actor, original.actor) == ("agent:b", "agent:a")
    assert copy.details is None  # never set: None, as reading the original gives
    assert values(copy) == {**values(original), "actor": "agent:b"}


def test_replaced_reads_an_unloaded_attribute_of_a_stored_row_through_the_orm() -> None:
    with _stored_event("details") as stored:
        copy = replaced(stored, actor="agent:b")
    assert copy.details == {"status": "created"}
    assert inspect(copy).transient
