"""SQLite's write queue (db/sqlite_writer.py) and the lazy writer's turn (db/uow.py): a unit
whose one write is a change commits it through the queue, batched with other units' but each
its own transaction; units that begin a transaction take their turn then, not when they open."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from handoffrail_server.api.deps import AppState
from handoffrail_server.db import engine as engine_module
from handoffrail_server.db import fast, fast_sqlite, sqlite_writer, uow
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import Tenant
from handoffrail_server.db.uow import unit_of_work
from tests.conftest import Api, packet_body
from tests.integration.test_fast_sqlite import _packet

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)

#: SQLite only: the queue serves SQLite's one writer
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
async def engine(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(migrated_url)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as session:
            session.add(Tenant(id="t1", name="t1", created_at=NOW, updated_at=NOW))
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


async def _write_alone(sessions: async_sessionmaker[AsyncSession], packet_id: uuid.UUID) -> bool:
    async with unit_of_work(sessions) as session:
        statement = fast_sqlite.insert_statement(session, [_packet(id=packet_id)])
        return await uow.commit_alone(session, [statement])


async def _count(engine: AsyncEngine, packet_id: uuid.UUID) -> int:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT count(*) FROM packet WHERE id = :id"), {"id": packet_id.hex}
        )
        return int(result.scalar_one())


def _batches(engine: AsyncEngine) -> int:
    """Batches the engine's write queue has written in this event loop (0: none yet)."""
    entry = sqlite_writer._queues.get(engine)
    return 0 if entry is None else entry[1].batches


def _together(engine: AsyncEngine) -> int:
    """Of those, the batches committed as one transaction."""
    entry = sqlite_writer._queues.get(engine)
    return 0 if entry is None else entry[1].together


async def test_a_batch_commits_as_one_transaction(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    assert await _write_alone(sessions, uuid.uuid4())
    batches, together = _batches(engine), _together(engine)
    ids = [uuid.uuid4() for _ in range(5)]
    assert (
        await asyncio.gather(*(_write_alone(sessions, packet_id) for packet_id in ids))
        == [True] * 5
    )
    assert (_batches(engine), _together(engine)) == (batches + 1, together + 1)
    assert [await _count(engine, packet_id) for packet_id in ids] == [1] * 5


async def test_units_in_one_batch_fail_alone(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    assert await _write_alone(sessions, first)
    batches, together = _batches(engine), _together(engine)
    outcomes = await asyncio.gather(
        _write_alone(sessions, second),
        _write_alone(sessions, first),  # its primary key is taken: this unit fails
        return_exceptions=True,
    )
    assert outcomes[0] is True
    assert isinstance(outcomes[1], sa_exc.IntegrityError)
    assert _batches(engine) == batches + 1  # one hop wrote both units
    assert _together(engine) == together  # rolled back, then one transaction each
    assert await _count(engine, second) == 1


async def test_a_transaction_after_the_queued_write_is_refused(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    packet_id = uuid.uuid4()

    async def write_then_read() -> None:
        async with unit_of_work(sessions) as session:
            statement = fast_sqlite.insert_statement(session, [_packet(id=packet_id)])
            assert await uow.commit_alone(session, [statement])
            await session.execute(text("SELECT 1"))

    with pytest.raises(fast.UnitFinished):
        await write_then_read()
    assert await _count(engine, packet_id) == 1  # committed on its own, as it answered


async def test_queued_writes_wait_for_the_unit_holding_the_turn(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    held, queued = uuid.uuid4(), uuid.uuid4()
    async with unit_of_work(sessions) as session:
        await fast_sqlite.insert(session, await fast_sqlite.connection(session), [_packet(id=held)])
        writer = asyncio.create_task(_write_alone(sessions, queued))
        await asyncio.sleep(0.2)
        assert not writer.done()  # waits for the turn, not in SQLite's busy handler
    assert await asyncio.wait_for(writer, 5) is True
    assert await _count(engine, held) == 1
    assert await _count(engine, queued) == 1


async def test_a_write_cancelled_before_its_batch_is_not_written(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    packet_id = uuid.uuid4()
    async with unit_of_work(sessions) as session:
        await session.execute(text("SELECT 1"))  # holds the turn
        writer = asyncio.create_task(_write_alone(sessions, packet_id))
        await asyncio.sleep(0.1)
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
    assert await _write_alone(sessions, uuid.uuid4())  # the queue goes on
    assert await _count(engine, packet_id) == 0


async def test_a_unit_that_began_writes_in_its_own_transaction(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    packet_id = uuid.uuid4()

    async def read_write_then_fail() -> None:
        async with unit_of_work(sessions) as session:
            await session.execute(text("SELECT 1"))
            statement = fast_sqlite.insert_statement(session, [_packet(id=packet_id)])
            assert not await uow.commit_alone(session, [statement])
            await fast_sqlite.run(await fast_sqlite.connection(session), [statement])
            raise RuntimeError("undo")

    with pytest.raises(RuntimeError, match="undo"):
        await read_write_then_fail()
    assert await _count(engine, packet_id) == 0


async def _held_turn(sessions: async_sessionmaker[AsyncSession], release: asyncio.Event) -> None:
    async with unit_of_work(sessions) as session:
        await session.execute(text("SELECT 1"))
        await release.wait()


async def test_api_requests_read_before_waiting_for_a_writer(api: Api) -> None:
    """A create's key lookup and a refused request do not wait for another unit's turn; the
    create's write does, and then commits with its history and stream event."""
    release = asyncio.Event()
    holder = asyncio.create_task(_held_turn(app_state_of(api).sessions, release))
    await asyncio.sleep(0.1)
    try:
        refused = await asyncio.wait_for(
            api.client.post("/api/v1/packets", json=packet_body(), headers=api.headers("hr_x")),
            5,
        )
        assert refused.status_code == 401
        create = asyncio.create_task(
            api.client.post("/api/v1/packets", json=packet_body(), headers=api.headers())
        )
        await asyncio.sleep(0.2)
        assert not create.done()
    finally:
        release.set()
        await holder
    response = await asyncio.wait_for(create, 5)
    assert response.status_code == 201, response.text
    packet_id = response.json()["id"]
    history = await api.client.get(f"/api/v1/packets/{packet_id}/history", headers=api.headers())
    assert [event["event_type"] for event in history.json()["events"]] == ["created"]


def app_state_of(api: Api) -> AppState:
    state: AppState = api.app.state.hr
    return state


async def test_concurrent_creates_share_batches_and_fan_out(api: Api) -> None:
    # the packets' agents registered, then remembered as registered: a create that registers
    # or touches agents writes in its session's transaction, not through the queue
    for _ in range(2):
        warm = await api.client.post("/api/v1/packets", json=packet_body(), headers=api.headers())
        assert warm.status_code == 201, warm.text
    hooks = [
        {"url": "http://93.184.216.34/a", "events": ["packet.created"]},  # never delivered:
        {"url": "http://93.184.216.34/b", "events": ["packet.completed"]},  # no worker runs
    ]
    for hook in hooks:
        created = await api.client.post("/api/v1/hooks", json=hook, headers=api.headers())
        assert created.status_code == 201, created.text
    engine = app_state_of(api).engine
    batches = _batches(engine)
    responses = await asyncio.gather(
        *(
            api.client.post("/api/v1/packets", json=packet_body(), headers=api.headers())
            for _ in range(30)
        )
    )
    assert [response.status_code for response in responses] == [201] * 30
    assert 0 < _batches(engine) - batches < 30  # some batch wrote several creates
    ids = {uuid.UUID(response.json()["id"]).hex for response in responses}
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT id, packet_id, event_type, payload, status FROM webhook_delivery")
            )
        ).all()
        streamed = (
            await connection.execute(text("SELECT count(*) FROM stream_event"))
        ).scalar_one()
    assert sorted(row.packet_id for row in rows) == sorted(ids)  # one each, to hook a only
    assert {row.event_type for row in rows} == {"packet.created"}
    assert {row.status for row in rows} == {"pending"}
    assert len({row.id for row in rows}) == 30
    for row in rows:
        assert uuid.UUID(hex=row.id).version == 4
        assert uuid.UUID(hex=row.id).variant == uuid.RFC_4122
    assert streamed >= 30
    listed = await api.client.get("/api/v1/packets?limit=100", headers=api.headers())
    assert listed.status_code == 200
    assert {uuid.UUID(p["id"]).hex for p in listed.json()["packets"]} >= ids


async def test_the_queue_does_not_keep_its_engine_alive(migrated_url: str) -> None:
    engine = create_engine(migrated_url)
    async with unit_of_work(create_sessionmaker(engine)) as session:
        session.add(Tenant(id="t1", name="t1", created_at=NOW, updated_at=NOW))
    assert await _write_alone(create_sessionmaker(engine), uuid.uuid4())
    assert engine in sqlite_writer._queues
    await engine.dispose()
    gone = weakref.ref(engine)
    del engine, session
    gc.collect()
    assert gone() is None


async def test_a_unit_takes_the_turn_when_its_transaction_begins(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    lock = uow._writer_lock(engine)
    assert lock is not None
    async with unit_of_work(sessions) as session:
        assert not lock.locked()  # opened: no turn yet
        await session.execute(text("SELECT 1"))
        assert lock.locked()  # began: BEGIN IMMEDIATE waited for the turn
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="failed"):
        await _begin_then_fail(sessions)
    assert not lock.locked()  # given back when the unit fails too


async def _begin_then_fail(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with unit_of_work(sessions) as session:
        await session.execute(text("SELECT 1"))
        raise RuntimeError("the request failed")


async def test_writers_hear_of_their_commit_even_if_the_connection_fails_on_return(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.util import greenlet_spawn as real

    async def failing_return(function: Any) -> Any:
        await real(function)
        raise RuntimeError("the pool could not take the connection back")

    monkeypatch.setattr(sqlite_writer, "greenlet_spawn", failing_return)
    packet_id = uuid.uuid4()
    assert await _write_alone(sessions, packet_id)  # committed: no error for the writer
    monkeypatch.undo()
    assert await _count(engine, packet_id) == 1


async def test_a_locked_database_fails_the_batch_once(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding SQLite's write lock past the busy timeout fails every unit of
    the batch after one wait, not one wait per unit; the queue works again afterwards."""
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 300)
    engine = create_engine(migrated_url)
    try:
        sessions = create_sessionmaker(engine)
        async with unit_of_work(sessions) as session:
            session.add(Tenant(id="t1", name="t1", created_at=NOW, updated_at=NOW))
        other = sqlite3.connect(migrated_url.split("///", 1)[1], isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's writer
        try:
            started = time.perf_counter()
            outcomes = await asyncio.gather(
                *(_write_alone(sessions, uuid.uuid4()) for _ in range(10)),
                return_exceptions=True,
            )
            elapsed = time.perf_counter() - started
        finally:
            other.rollback()
            other.close()
        assert all(isinstance(outcome, sa_exc.OperationalError) for outcome in outcomes)
        assert elapsed < 2.0  # one busy timeout (0.3 s), not eleven
        assert await _write_alone(sessions, uuid.uuid4())
    finally:
        await engine.dispose()


async def test_queued_compare_and_sets_of_one_row_win_once_and_losers_write_nothing(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Three units queue a compare-and-set of the same row version with a write each: they
    share one batch, the first wins and writes, the others get no rows and wrote nothing, and
    a loser goes on in a transaction of its own (its retry cannot lose for ever in the queue)."""
    packet_id = uuid.uuid4()
    assert await _write_alone(sessions, packet_id)  # row version 1

    async def unit(tag: str) -> tuple[str, bool]:
        change = fast_sqlite.Statement(
            "UPDATE packet SET status = 'claimed', row_version = row_version + 1"
            " WHERE id = ? AND row_version = 1 RETURNING id",
            [(packet_id.hex,)],
        )
        write = fast_sqlite.Statement(
            "INSERT INTO packet_tag (packet_id, tag, tenant_id) VALUES (?, ?, 't1')",
            [(packet_id.hex, tag)],
        )
        async with unit_of_work(sessions) as session:
            rows = await uow.change_alone(session, change, [write])
            assert rows is not None
            if rows:
                assert rows == [(packet_id.hex,)]
                return tag, True
            assert await uow.change_alone(session, change, [write]) is None  # not queued again
            await session.execute(text("SELECT 1"))  # it may begin a transaction
            return tag, False

    batches = _batches(engine)
    results = await asyncio.gather(unit("a"), unit("b"), unit("c"))
    assert sorted(won for _, won in results) == [False, False, True]
    assert _batches(engine) - batches == 1
    async with engine.connect() as connection:
        tags = (
            await connection.execute(
                text("SELECT tag FROM packet_tag WHERE packet_id = :id"), {"id": packet_id.hex}
            )
        ).scalars()
        assert list(tags) == [tag for tag, won in results if won]
