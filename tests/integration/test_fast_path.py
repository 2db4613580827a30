"""The raw asyncpg hot path (db/fast.py) runs inside the session's transaction and fails like
SQLAlchemy would: these guard the private SQLAlchemy adapter API it relies on."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handoffrail_server.clock import SystemClock
from handoffrail_server.db import fast
from handoffrail_server.db.models import (
    PacketTag,
    StreamEvent,
    Tenant,
    TenantUsage,
)
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.keys import repository as keys
from handoffrail_server.limits import repository as usage
from handoffrail_server.limits import service as quotas
from handoffrail_server.packets import repository as packets
from handoffrail_server.realtime import service as streams
from tests.integration.conftest import pg_tenant

pytestmark = pytest.mark.postgres


async def _handoffs(sessions: async_sessionmaker[AsyncSession], tenant_id: str) -> int:
    async with unit_of_work(sessions) as session:
        query = select(func.coalesce(func.sum(TenantUsage.handoffs), 0)).where(
            TenantUsage.tenant_id == tenant_id
        )
        return int((await session.execute(query)).scalar_one())


async def _kill_backend(postgres_url: str, driver: asyncpg.Connection) -> None:
    """Terminate the server process behind `driver`, as a restart or a cut connection would."""
    pid = await driver.fetchval("SELECT pg_backend_pid()")
    admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def test_a_raw_first_statement_is_inside_the_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(sessions)

    async def take_then_fail() -> None:
        async with unit_of_work(sessions) as session:
            # the very first statement of the unit goes through the raw path
            assert await usage.add_handoffs(session, tenant_id, "2026-11-23", 3, 10) == 3
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        await take_then_fail()
    assert await _handoffs(sessions, tenant_id) == 0
    async with unit_of_work(sessions) as session:
        assert await usage.add_handoffs(session, tenant_id, "2026-11-23", 3, 10) == 3
        assert await usage.add_handoffs(session, tenant_id, "2026-11-23", 8, 10) is None
    assert await _handoffs(sessions, tenant_id) == 3


async def test_raw_and_sqlalchemy_statements_share_one_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with unit_of_work(sessions) as session:
        await session.execute(text("SELECT 1"))  # SQLAlchemy began the transaction
        driver = await fast.connection(session)
        assert driver is not None
        sa_pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert await driver.fetchval("SELECT pg_backend_pid()") == sa_pid
        assert (
            await driver.fetchval("SELECT pg_current_xact_id()::text")
            == (await session.execute(text("SELECT pg_current_xact_id()::text"))).scalar_one()
        )
        assert await fast.connection(session) is driver  # cached for the transaction


async def test_driver_errors_become_sqlalchemy_errors(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(sessions)
    orphan = PacketTag(packet_id=uuid.uuid4(), tag="x", tenant_id=tenant_id)

    async def insert_orphan() -> None:
        async with unit_of_work(sessions) as session:
            driver = await fast.connection(session)
            assert driver is not None
            await fast.insert(session, driver, [orphan])  # no such packet: FK refuses

    with pytest.raises(sa_exc.IntegrityError):
        await insert_orphan()


async def test_a_lost_connection_is_a_503_kind_error_and_the_pool_recovers(
    sessions: async_sessionmaker[AsyncSession], postgres_url: str
) -> None:
    tenant_id = await pg_tenant(sessions)

    async def lose_the_connection_mid_unit() -> None:
        async with unit_of_work(sessions) as session:
            driver = await fast.connection(session)
            assert driver is not None
            await _kill_backend(postgres_url, driver)
            await usage.add_handoffs(session, tenant_id, "2026-11-23", 1, 10)

    with pytest.raises(sa_exc.OperationalError) as caught:
        await lose_the_connection_mid_unit()
    assert caught.value.connection_invalidated
    for _ in range(2):  # the pool hands out working connections again
        async with unit_of_work(sessions) as session:
            assert await usage.add_handoffs(session, tenant_id, "2026-11-23", 1, 10) is not None


async def test_stream_positions_restart_per_transaction_and_savepoints_roll_back(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(sessions)

    async def append(session: AsyncSession, status: str) -> None:
        event = streams.build_event(
            SystemClock(),
            tenant_id=tenant_id,
            history_event=status,
            packet_id=uuid.uuid4(),
            status=status,
            metadata={"source_agent": {"id": "a"}},
            details=None,
            hitl=None,
        )
        await streams.append(session, event)

    for _ in range(2):  # one session, two transactions: positions start at 0 again
        session = sessions()
        try:
            async with session.begin():
                await append(session, "one")
                await append(session, "two")
        finally:
            await session.close()
    async with unit_of_work(sessions) as session:
        await append(session, "kept")

        async def failing_item() -> None:
            async with session.begin_nested():
                await append(session, "rolled back")
                raise RuntimeError("item failed")

        with pytest.raises(RuntimeError):
            await failing_item()
        await append(session, "kept too")
    async with unit_of_work(sessions) as session:
        rows = list(
            (
                await session.execute(
                    select(StreamEvent)
                    .where(StreamEvent.tenant_id == tenant_id)
                    .order_by(StreamEvent.id)
                )
            ).scalars()
        )
    assert [row.status for row in rows] == ["one", "two", "one", "two", "kept", "kept too"]
    assert [row.id % 4096 for row in rows] == [0, 1, 0, 1, 0, 2]
    assert [row.source_agent_id for row in rows] == ["a"] * 6


# -- the unit of work's own connection (db/uow.py `_on_one_connection`) ---------------------


def _checked_out(sessions: async_sessionmaker[AsyncSession]) -> int:
    bind = sessions.kw["bind"]
    count: int = bind.sync_engine.pool.checkedout()
    return count


async def test_a_raw_only_unit_commits_without_a_session_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(sessions)
    async with unit_of_work(sessions) as session:
        assert _checked_out(sessions) == 0  # nothing is checked out before the first statement
        assert await usage.add_handoffs(session, tenant_id, "2026-11-23", 2, 10) == 2
        assert not session.in_transaction()  # the driver's transaction, not the session's
        driver = await fast.connection(session)
        assert driver is not None
        assert await driver.fetchval("SELECT now() = statement_timestamp()") is False  # in a txn
    assert _checked_out(sessions) == 0
    assert await _handoffs(sessions, tenant_id) == 2


async def test_orm_statements_after_raw_ones_share_its_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with unit_of_work(sessions) as session:
        driver = await fast.connection(session)  # raw first: the unit's own connection
        assert driver is not None
        xact = await driver.fetchval("SELECT pg_current_xact_id()::text")
        orm = (await session.execute(text("SELECT pg_current_xact_id()::text"))).scalar_one()
        assert orm == xact
        assert await fast.connection(session) is driver
        assert _checked_out(sessions) == 1


async def test_orm_work_joins_the_raw_transaction_and_fails_with_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(sessions)
    other = f"t-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)

    async def raw_then_orm(fail: bool) -> None:
        async with unit_of_work(sessions) as session:
            await usage.add_handoffs(session, tenant_id, "2026-11-23", 1, 10)
            session.add(Tenant(id=other, name=other, created_at=now, updated_at=now))
            if fail:
                await session.flush()
                raise RuntimeError("roll back both")

    with pytest.raises(RuntimeError):
        await raw_then_orm(fail=True)
    assert await _handoffs(sessions, tenant_id) == 0
    assert _checked_out(sessions) == 0
    await raw_then_orm(fail=False)  # added only: the unit of work flushes and commits it
    assert await _handoffs(sessions, tenant_id) == 1
    async with unit_of_work(sessions) as session:
        assert await session.get(Tenant, other) is not None


async def test_a_connection_lost_before_commit_is_a_503_kind_error(
    sessions: async_sessionmaker[AsyncSession], postgres_url: str
) -> None:
    tenant_id = await pg_tenant(sessions)

    async def lose_it_before_commit() -> None:
        async with unit_of_work(sessions) as session:
            await usage.add_handoffs(session, tenant_id, "2026-11-23", 1, 10)
            driver = await fast.connection(session)
            assert driver is not None
            await _kill_backend(postgres_url, driver)

    with pytest.raises(sa_exc.OperationalError) as caught:
        await lose_it_before_commit()  # the COMMIT itself meets the dead connection
    assert caught.value.connection_invalidated
    assert _checked_out(sessions) == 0
    assert await _handoffs(sessions, tenant_id) == 0
    for _ in range(3):  # the pool (2 connections) hands out working ones again
        async with unit_of_work(sessions) as session:
            assert await usage.add_handoffs(session, tenant_id, "2026-11-23", 1, 10) is not None


async def test_a_cancelled_unit_rolls_back_and_returns_its_connection(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(sessions)
    inside = asyncio.Event()

    async def stuck() -> None:
        async with unit_of_work(sessions) as session:
            await usage.add_handoffs(session, tenant_id, "2026-11-23", 5, 10)
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stuck())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _checked_out(sessions) == 0
    assert await _handoffs(sessions, tenant_id) == 0


async def test_per_engine_memories_survive_units_bound_to_connections(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with unit_of_work(sessions) as session:
        first = quotas._recent_agents(session)
    async with unit_of_work(sessions) as session:
        assert quotas._recent_agents(session) is first


async def test_plain_reads_run_before_the_begin_and_writes_open_the_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(sessions)
    async with unit_of_work(sessions) as session:
        assert await packets.get(session, tenant_id, uuid.uuid4()) is None
        assert await keys.principal_row(session, "no-such-hash") is None
        lean = session.info[fast.LEAN_KEY]
        assert lean.driver is not None
        assert not lean.driver.is_in_transaction()  # a read-only unit: no BEGIN, no COMMIT
        await usage.add_handoffs(session, tenant_id, "2026-11-23", 1, 10)
        assert lean.driver.is_in_transaction()
        assert await packets.get(session, tenant_id, uuid.uuid4()) is None  # now inside it
        assert lean.driver.is_in_transaction()
    assert await _handoffs(sessions, tenant_id) == 1


async def _tenant_rows(sessions: async_sessionmaker[AsyncSession], *ids: str) -> int:
    async with unit_of_work(sessions) as session:
        query = select(func.count()).select_from(Tenant).where(Tenant.id.in_(ids))
        return int((await session.execute(query)).scalar_one())


_INSERT_TENANT = (
    "INSERT INTO tenant (id, name, tier, is_operator, created_at, updated_at)"
    " VALUES ($1, $1, 'free', false, now(), now())"
)


async def test_a_last_write_of_a_unit_that_wrote_nothing_commits_on_its_own(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    first = f"t-{uuid.uuid4().hex[:8]}"
    async with unit_of_work(sessions) as session:
        driver = await fast.connection(session, last=True)
        assert driver is not None
        assert not driver.is_in_transaction()  # no BEGIN: PostgreSQL commits the statement
        await driver.execute(_INSERT_TENANT, first)
        assert session.info[fast.LEAN_KEY].finished
        assert await fast.connection(session, begin=False) is driver  # reads may follow
    assert _checked_out(sessions) == 0
    assert await _tenant_rows(sessions, first) == 1


async def test_a_last_write_after_other_writes_joins_their_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(sessions)
    other = f"t-{uuid.uuid4().hex[:8]}"

    async def write_then_fail() -> None:
        async with unit_of_work(sessions) as session:
            await usage.add_handoffs(session, tenant_id, "2026-11-23", 1, 10)
            driver = await fast.connection(session, last=True)
            assert driver is not None
            assert driver.is_in_transaction()
            assert not session.info[fast.LEAN_KEY].finished
            await driver.execute(_INSERT_TENANT, other)
            raise RuntimeError("roll back both")

    with pytest.raises(RuntimeError):
        await write_then_fail()
    assert await _handoffs(sessions, tenant_id) == 0
    assert await _tenant_rows(sessions, other) == 0


async def test_writes_after_the_last_statement_are_refused(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(sessions)
    first, second = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(2))
    now = datetime.now(UTC)

    async def raw_after_last() -> None:
        async with unit_of_work(sessions) as session:
            driver = await fast.connection(session, last=True)
            assert driver is not None
            await driver.execute(_INSERT_TENANT, first)
            await usage.add_handoffs(session, tenant_id, "2026-11-23", 1, 10)  # raw: refused

    async def orm_after_last() -> None:
        async with unit_of_work(sessions) as session:
            driver = await fast.connection(session, last=True)
            assert driver is not None
            await driver.execute(_INSERT_TENANT, second)
            session.add(Tenant(id=f"{second}-orm", name="x", created_at=now, updated_at=now))

    with pytest.raises(fast.UnitFinished):
        await raw_after_last()
    with pytest.raises(fast.UnitFinished):
        await orm_after_last()  # refused at commit
    # what the last statement wrote had committed; what came after it did not
    assert await _tenant_rows(sessions, first, second) == 2
    assert await _tenant_rows(sessions, f"{second}-orm") == 0
    assert await _handoffs(sessions, tenant_id) == 0
    assert _checked_out(sessions) == 0
