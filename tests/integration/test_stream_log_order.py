"""The stream log's ids follow commit order within a tenant, so a reader that remembers the last
id (a live SSE reader, or a client resuming with Last-Event-ID) never skips an event that a slower
concurrent transaction commits later."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handoffrail_server.clock import SystemClock
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import Tenant
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.realtime import service


async def _settled(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, after: int
) -> list[Any]:
    """Every deliverable event after `after`, once nothing is held back any more.

    The horizon is cluster-wide: a write transaction of anything else on the same PostgreSQL
    (another test run, a backup) holds events back for a moment; they are delivered after it,
    never skipped, which is what these tests are about."""
    deadline = time.monotonic() + 10
    while True:
        async with unit_of_work(sessions) as reader:
            batch = await service.read_batch(reader, tenant_id, after)
        if not batch.held_back or time.monotonic() > deadline:
            return batch.events
        await asyncio.sleep(0.05)


async def _append(session: AsyncSession, tenant_id: str, status: str) -> None:
    event = service.build_event(
        SystemClock(),
        tenant_id=tenant_id,
        history_event=status,
        packet_id=uuid.uuid4(),
        status=status,
        metadata={},
        details=None,
        hitl=None,
    )
    await service.append(session, event)


async def test_a_slow_transaction_is_not_skipped_by_a_reader(migrated_url: str) -> None:
    engine = create_engine(migrated_url, pool_size=3, max_overflow=0)
    sessions = create_sessionmaker(engine)
    try:
        tenant_id = f"t-{uuid.uuid4().hex[:8]}"
        async with unit_of_work(sessions) as session:
            now = datetime.now(UTC)
            session.add(Tenant(id=tenant_id, name=tenant_id, created_at=now, updated_at=now))
        async with unit_of_work(sessions) as reader:
            start = await service.newest_id(reader, tenant_id)

        slow = sessions()
        try:
            await slow.begin()
            await _append(slow, tenant_id, "slow")  # written first, committed last
            expected = ["slow"]
            if not migrated_url.startswith("sqlite"):  # SQLite allows one writer at a time
                async with unit_of_work(sessions) as fast:
                    await _append(fast, tenant_id, "fast")
                async with unit_of_work(sessions) as reader:
                    batch = await service.read_batch(reader, tenant_id, start)
                # "fast" committed, but below it "slow" may still commit: held back
                assert batch.events == []
                assert batch.held_back
                expected = ["slow", "fast"]
            await slow.commit()
        finally:
            await slow.close()

        later = await _settled(sessions, tenant_id, start)
        assert [event.status for event in later] == expected, "the slower commit was skipped"
    finally:
        await engine.dispose()


async def test_savepoint_rollback_drops_only_its_own_events(migrated_url: str) -> None:
    """Batch operations run each item in a savepoint: a failed item's event must vanish, the
    others (before and after it) must stay."""
    engine = create_engine(migrated_url, pool_size=2, max_overflow=0)
    sessions = create_sessionmaker(engine)
    try:
        tenant_id = f"t-{uuid.uuid4().hex[:8]}"
        async with unit_of_work(sessions) as session:
            now = datetime.now(UTC)
            session.add(Tenant(id=tenant_id, name=tenant_id, created_at=now, updated_at=now))
        async with unit_of_work(sessions) as session:
            await _append(session, tenant_id, "outer-1")
            async with session.begin_nested():
                await _append(session, tenant_id, "item-ok")
            try:
                async with session.begin_nested():
                    await _append(session, tenant_id, "item-failed")
                    raise RuntimeError("item failed")
            except RuntimeError:
                pass
            await _append(session, tenant_id, "outer-2")
        try:
            async with unit_of_work(sessions) as session:
                await _append(session, tenant_id, "rolled-back")
                raise RuntimeError("request failed")
        except RuntimeError:
            pass
        events = await _settled(sessions, tenant_id, 0)
        assert [event.status for event in events] == ["outer-1", "item-ok", "outer-2"]
        assert [event.id for event in events] == sorted(event.id for event in events)
    finally:
        await engine.dispose()


async def test_an_older_open_transaction_holds_newer_events_back(migrated_url: str) -> None:
    """PostgreSQL: ids come from the writing transaction's xid, so an event committed by a newer
    transaction waits (held back, not skipped) until an older writing transaction ends, and is
    then delivered after the older one's events."""
    if migrated_url.startswith("sqlite"):
        return  # one writer at a time: nothing can be held back
    from sqlalchemy import text

    engine = create_engine(migrated_url, pool_size=3, max_overflow=0)
    sessions = create_sessionmaker(engine)
    try:
        tenant_id = f"t-{uuid.uuid4().hex[:8]}"
        async with unit_of_work(sessions) as session:
            now = datetime.now(UTC)
            session.add(Tenant(id=tenant_id, name=tenant_id, created_at=now, updated_at=now))
        async with unit_of_work(sessions) as reader:
            start = await service.newest_id(reader, tenant_id)

        older = sessions()
        try:
            await older.begin()
            await older.execute(text("SELECT pg_current_xact_id()"))  # a writer: has an xid
            async with unit_of_work(sessions) as newer:
                await _append(newer, tenant_id, "newer")
            async with unit_of_work(sessions) as reader:
                batch = await service.read_batch(reader, tenant_id, start)
            assert batch.events == []
            assert batch.held_back
            await _append(older, tenant_id, "older")
            await older.commit()
        finally:
            await older.close()

        # the cluster's other transactions (other tests run beside this one) may hold events
        # back a moment longer: the xid horizon is the whole cluster's
        deadline = time.monotonic() + 10
        while True:
            async with unit_of_work(sessions) as reader:
                batch = await service.read_batch(reader, tenant_id, start)
            if not batch.held_back or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert [event.status for event in batch.events] == ["older", "newer"]
        assert not batch.held_back
        assert batch.events[0].id < batch.events[1].id
    finally:
        await engine.dispose()
