"""SQLite reads on the event loop's thread (db/sqlite_reader.py): they see every commit, never
make the loop wait (a locked database falls back to a pooled connection in its thread), cannot
write, are used only for file databases that exist, and close with the engine."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from handoffrail_server.db import fast_sqlite, sqlite_reader
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.keys.tokens import hash_key
from tests.conftest import Api, packet_body

#: SQLite only: PostgreSQL reads go through asyncpg on the loop already
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

_VERSION_SQL = "SELECT version_num FROM alembic_version"


def _path(url: str) -> str:
    database = make_url(url).database
    assert database
    return database


def _hold_exclusively(path: str, locked: threading.Event, seconds: float) -> None:
    """Another connection (as another process would) keeps the database to itself a while:
    exclusive locking mode, so after its write no other connection can even read."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("CREATE TABLE lock_probe (x INTEGER)")
        holder.execute("COMMIT")
        locked.set()
        time.sleep(seconds)
    finally:
        holder.close()


@sqlite_only
async def test_reads_see_every_commit_of_other_connections(migrated_url: str) -> None:
    engine = create_engine(migrated_url)
    try:
        version = sqlite_reader.read(engine, _VERSION_SQL, ())
        assert version is not None
        assert len(version) == 1
        other = sqlite3.connect(_path(migrated_url), isolation_level=None)
        try:
            other.execute("UPDATE alembic_version SET version_num = 'elsewhere'")
        finally:
            other.close()
        assert sqlite_reader.read(engine, _VERSION_SQL, ()) == [("elsewhere",)]
    finally:
        await engine.dispose()


@sqlite_only
async def test_a_locked_database_falls_back_without_making_the_loop_wait(
    migrated_url: str,
) -> None:
    engine = create_engine(migrated_url)  # no connection of its own yet: the lock can be had
    locked = threading.Event()
    holder = threading.Thread(
        target=_hold_exclusively, args=(_path(migrated_url), locked, 0.6), daemon=True
    )
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 10)
        started = time.perf_counter()
        assert sqlite_reader.read(engine, _VERSION_SQL, ()) is None  # busy: not here
        assert time.perf_counter() - started < 0.1
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            async with unit_of_work(create_sessionmaker(engine)) as session:
                rows = await fast_sqlite.read_outside(session, _VERSION_SQL, ())
        finally:
            ticker.cancel()
        assert len(rows) == 1  # read by a pooled connection once the lock was gone
        assert time.perf_counter() - started >= 0.3  # it did wait for the lock...
        assert ticks >= 10  # ...in its thread, while the event loop went on
        assert sqlite_reader.read(engine, _VERSION_SQL, ()) == rows  # and here again
    finally:
        holder.join(10)
        await engine.dispose()


@sqlite_only
async def test_it_cannot_write(migrated_url: str) -> None:
    engine = create_engine(migrated_url)
    try:
        assert sqlite_reader.read(engine, "DELETE FROM alembic_version", ()) is None
        assert sqlite_reader.read(engine, _VERSION_SQL, ()) not in (None, [])
    finally:
        await engine.dispose()


async def test_memory_databases_and_missing_files_are_left_to_the_pool(tmp_path: Path) -> None:
    memory = create_engine("sqlite+aiosqlite://")
    missing_path = tmp_path / "not-yet.db"
    missing = create_engine(f"sqlite+aiosqlite:///{missing_path}")
    with_options = create_engine(f"sqlite+aiosqlite:///{missing_path}?timeout=1")
    try:
        for engine in (memory, missing, with_options):
            assert sqlite_reader.read(engine, "SELECT 1", ()) is None
        assert not missing_path.exists()  # never created by a read
    finally:
        for engine in (memory, missing, with_options):
            await engine.dispose()


@sqlite_only
async def test_dispose_closes_it_and_the_engine_is_not_kept_alive(migrated_url: str) -> None:
    engine: AsyncEngine | None = create_engine(migrated_url)
    assert engine is not None
    assert sqlite_reader.read(engine, _VERSION_SQL, ()) is not None
    reader = sqlite_reader._readers[engine]
    opened = reader.connection
    assert opened is not None
    await engine.dispose()
    assert reader.connection is None
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        opened.execute("SELECT 1")
    assert sqlite_reader.read(engine, _VERSION_SQL, ()) is not None  # a new one, after dispose
    await engine.dispose()
    gone = weakref.ref(engine)
    engine = None
    gc.collect()
    assert gone() is None


@sqlite_only
async def test_a_key_revoked_by_another_process_is_refused_on_the_next_request(api: Api) -> None:
    _tenant, key = await api.new_tenant_admin()
    listed = await api.client.get("/api/v1/packets", headers=api.headers(key))
    assert listed.status_code == 200, listed.text
    other = sqlite3.connect(_path(api.url), isolation_level=None)
    try:
        other.execute(
            "UPDATE api_key SET revoked_at = ? WHERE key_hash = ?",
            (datetime.now(UTC).isoformat(), hash_key(key)),
        )
        assert other.total_changes == 1
    finally:
        other.close()
    refused = await api.client.post("/api/v1/packets", json=packet_body(), headers=api.headers(key))
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "auth.key_revoked"
