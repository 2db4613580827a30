"""Raw SQLite inserts (db/fast_sqlite.py) write exactly what SQLAlchemy writes, inside the
session's transaction and savepoints, and fail with SQLAlchemy's error classes."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handoffrail_server.db import fast, fast_sqlite
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import Packet, PacketEvent, PacketTag, Tenant
from handoffrail_server.db.rows import insert_rows, transient
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.packets import repository
from tests.conftest import Api, packet_body

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


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_run_writes_then_queries_and_stops_at_the_first_failure(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    first, second = _packet(), _packet()
    count = fast_sqlite.Statement("SELECT count(*) FROM packet WHERE tenant_id = ?", [("t1",)])
    async with unit_of_work(sessions) as session:
        driver = await fast_sqlite.connection(session)
        writes = [fast_sqlite.insert_statement(session, [first])]
        assert await fast_sqlite.run(driver, writes, count) == [(1,)]
        failing = [
            fast_sqlite.insert_statement(session, [first]),  # duplicate key: stops here
            fast_sqlite.insert_statement(session, [second]),
        ]
        async with session.begin_nested():
            inner = await fast_sqlite.connection(session)
            with pytest.raises(sa_exc.IntegrityError):
                await fast_sqlite.run(inner, failing)
    async with unit_of_work(sessions) as session:
        ids = (await session.execute(text("SELECT id FROM packet"))).scalars().all()
    assert ids == [first.id.hex]


def _count_calls(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> list[str]:
    seen: list[str] = []
    original = getattr(target, name)

    def counting(self: Any, fn: Any = None, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", name))
        if fn is None:
            return original(self)
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(target, name, counting)
    return seen


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_committed_unit_of_work_is_not_rolled_back_again_on_return(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection

    rollbacks = _count_calls(monkeypatch, AsyncAdapt_aiosqlite_connection, "rollback")
    async with unit_of_work(sessions) as session:
        await _row_count(session)
    assert rollbacks == []
    with pytest.raises(RuntimeError):
        await _count_then_fail(sessions)
    assert rollbacks == ["rollback"]  # the failed one, once


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_transaction_left_open_on_a_pooled_connection_is_undone(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    stray = _packet()
    engine = sessions.kw["bind"]
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        # as if a cancelled caller's statements ran in the driver's thread after it left
        await driver.execute("BEGIN")
        await driver.execute_fetchall(*_insert_sql_of(stray))
        assert fast_sqlite.needs_rollback(raw.dbapi_connection)
    async with unit_of_work(sessions) as session:
        assert await _row_count(session) == 0
    # the reset check ran before the stray transaction began: `BEGIN IMMEDIATE` undoes it
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
    await driver.execute("BEGIN")  # on the connection now back in the pool (the only one)
    await driver.execute_fetchall(*_insert_sql_of(stray))
    async with unit_of_work(sessions) as session:
        assert await _row_count(session) == 0


async def _count_then_fail(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with unit_of_work(sessions) as session:
        await _row_count(session)
        raise RuntimeError("the request failed")


async def _row_count(session: AsyncSession) -> int:
    return int((await session.execute(text("SELECT count(*) FROM packet"))).scalar_one())


def _insert_sql_of(packet: Packet) -> tuple[str, tuple[Any, ...]]:
    return (
        "INSERT INTO packet (id, tenant_id, version, status, priority, priority_rank,"
        " source_agent_id, target_agent_id, metadata, context, decisions, actions, dependencies,"
        " search_text, row_version, created_at, updated_at)"
        " VALUES (?, 't1', '1.0.0', 'created', 'high', 2, 'a', 'b', '{}', '{}', '[]', '{}', '[]',"
        " 's', 1, '2026-11-26 04:30:01', '2026-11-26 04:30:01')",
        (packet.id.hex,),
    )


async def _warm_tenant(api: Api) -> tuple[dict[str, str], dict[str, Any]]:
    """Headers of a fresh `business` tenant (no daily handoff counter) and the last of two
    packets it created: their agents registered, then remembered as registered, so the next
    create, claim or PATCH writes nothing but itself."""
    _tenant, key = await api.new_tenant_admin("business")
    headers = api.headers(key)
    for _ in range(2):
        created = await api.client.post("/api/v1/packets", json=packet_body(), headers=headers)
        assert created.status_code == 201, created.text
    packet: dict[str, Any] = created.json()
    return headers, packet


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_create_takes_one_trip_to_a_driver_thread(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiosqlite

    headers, _packet_json = await _warm_tenant(api)
    hops = _count_calls(monkeypatch, aiosqlite.Connection, "_execute")
    response = await api.client.post("/api/v1/packets", json=packet_body(), headers=headers)
    assert response.status_code == 201, response.text
    # the key lookup on the event loop's thread (db.sqlite_reader), then the change through the
    # write queue: BEGIN IMMEDIATE, every write, COMMIT in one go (it was four trips: BEGIN
    # IMMEDIATE, the key lookup, the writes, COMMIT, all while holding the writer's turn)
    assert hops == ["_commit_all"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_json_columns_are_written_by_orjson_with_a_fallback(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The engine's JSON serializer is `fast.dump_json`: orjson's compact text (several times
    faster than `json` on packet documents), `json` for what orjson refuses (2**70)."""
    packet = _packet(context={"summary": "Ünï ☃", "conversation_state": []})
    big = _packet(packet_metadata={"n": 2**70})
    async with unit_of_work(sessions) as session:
        await insert_rows(session, packet)
        await insert_rows(session, big)
    async with unit_of_work(sessions) as session:
        stored = await _row(session, packet.id)
        assert stored["context"] == '{"summary":"Ünï ☃","conversation_state":[]}'
        assert (await _row(session, big.id))["metadata"] == '{"n": 1180591620717411303424}'
        loaded = await session.get(Packet, big.id)
        assert loaded is not None
        assert loaded.packet_metadata == {"n": 2**70}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_unit_cancelled_while_its_begin_waits_leaves_no_write_lock_behind(
    migrated_url: str,
) -> None:
    """The BEGIN IMMEDIATE of a cancelled unit still runs in the driver's thread once the lock
    is free; the rollback queued behind it lets the next writer in at once (it used to hold
    SQLite's write lock from the pool until that connection was used again)."""
    engine = create_engine(migrated_url)
    sessions = create_sessionmaker(engine)
    path = make_url(migrated_url).database
    assert path
    locked, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(10)
            holder.execute("ROLLBACK")
        finally:
            holder.close()

    async def unit() -> None:
        async with unit_of_work(sessions) as session:
            await session.execute(text("SELECT 1"))  # begins: waits for the lock in the thread

    holder = threading.Thread(target=hold_the_write_lock, daemon=True)
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 10)
        task = asyncio.create_task(unit())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await asyncio.to_thread(holder.join, 10)
        await asyncio.sleep(0.3)  # the BEGIN, and what was queued behind it, ran in the thread
        writer = sqlite3.connect(path, timeout=1, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")  # "database is locked" after 1 s if still held
            writer.execute("ROLLBACK")
        finally:
            writer.close()
    finally:
        release.set()
        await engine.dispose()


def _columns(packet: Packet) -> dict[str, Any]:
    return {attribute: getattr(packet, attribute) for attribute, _, _ in fast.read_columns(Packet)}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_raw_reads_and_compare_and_sets_give_what_the_orm_reads(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """`repository.get` and `compare_and_set` on SQLite read raw rows through the column types'
    result processors: every value (UUIDs, aware datetimes, JSON with a 2**70, NULLs) and its
    type as SQLAlchemy's ORM reads the same row."""
    stored = _packet(hitl=None, expires_at=NOW, claimed_at=None)
    async with unit_of_work(sessions) as session:
        await insert_rows(session, stored)
    async with unit_of_work(sessions) as session:
        raw = await repository.get(session, "t1", stored.id)
        assert raw is not None
        assert await repository.get(session, "t2", stored.id) is None  # another tenant's
        assert await repository.get(session, "t1", uuid.uuid4()) is None
    async with unit_of_work(sessions) as session:
        orm = await session.get(Packet, stored.id)
        assert orm is not None
        expected = _columns(orm)
    assert _columns(raw) == expected
    assert {k: type(v) for k, v in _columns(raw).items()} == {
        k: type(v) for k, v in expected.items()
    }
    changed = {"status": "claimed", "claimed_at": NOW, "packet_metadata": {"n": 2**70}}
    async with unit_of_work(sessions) as session:
        assert (
            await repository.compare_and_set(
                session, raw, changed, allowed_statuses=["in_progress"]
            )
            is None
        )  # not from that status
        updated = await repository.compare_and_set(
            session, raw, changed, allowed_statuses=["created"]
        )
        assert updated is not None
        assert await repository.compare_and_set(session, raw, changed) is None  # stale version
    async with unit_of_work(sessions) as session:
        orm = await session.get(Packet, stored.id)
        assert orm is not None
        assert _columns(updated) == _columns(orm)
        assert orm.row_version == 2
        assert orm.packet_metadata == {"n": 2**70}
        assert orm.claimed_at == NOW


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_claim_and_a_patch_take_one_trip_each_through_the_write_queue(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiosqlite

    headers, created = await _warm_tenant(api)
    packet_id = created["id"]
    hops = _count_calls(monkeypatch, aiosqlite.Connection, "_execute")
    target = created["metadata"]["target_agent"]  # registered and remembered: no write
    claim = {"agent_id": target["id"], "agent_name": target["name"]}
    claimed = await api.client.post(
        f"/api/v1/packets/{packet_id}/claim", json=claim, headers=headers
    )
    assert claimed.status_code == 200, claimed.text
    patched = await api.client.patch(
        f"/api/v1/packets/{packet_id}", json={"status": "in_progress"}, headers=headers
    )
    assert patched.status_code == 200, patched.text
    # each: the packet read on the event loop's thread (db.sqlite_reader), then the write
    # queue's batch: BEGIN IMMEDIATE, the compare-and-set, its history, stream and outbox rows
    # if it won, COMMIT (it was three trips holding the writer's turn: BEGIN, the rest, COMMIT)
    assert hops == ["_commit_all", "_commit_all"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_claim_next_takes_four_trips_to_a_driver_thread(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiosqlite

    headers, created = await _warm_tenant(api)
    target = created["metadata"]["target_agent"]
    hops = _count_calls(monkeypatch, aiosqlite.Connection, "_execute")
    claimed = await api.client.post(
        "/api/v1/packets/claim-next",
        json={"agent_id": target["id"], "agent_name": target["name"], "tags": []},
        headers=headers,
    )
    assert claimed.status_code == 200, claimed.text
    # BEGIN IMMEDIATE, the candidates (read in the writer's turn: claimers contend for the same
    # first rows), the compare-and-set with its history, stream and outbox rows, COMMIT
    assert hops == ["begin_immediate_here", "_execute_fetchall", "run_if_changed_here", "commit"]
