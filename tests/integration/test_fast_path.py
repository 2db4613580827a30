"""The raw asyncpg hot path (db/fast.py) runs inside the session's transaction and fails like
SQLAlchemy would: these guard the private SQLAlchemy adapter API it relies on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handoffrail_server.clock import SystemClock
from handoffrail_server.db import fast, migrations
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import (
    Packet,
    PacketEvent,
    PacketTag,
    StreamEvent,
    Tenant,
    TenantUsage,
    WebhookDelivery,
    WebhookEndpoint,
)
from handoffrail_server.db.rows import replaced
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.keys import repository as keys
from handoffrail_server.limits import repository as usage
from handoffrail_server.limits import service as quotas
from handoffrail_server.packets import claims
from handoffrail_server.packets import repository as packets
from handoffrail_server.packets.schemas import ClaimNext, PacketClaim, PacketCreate
from handoffrail_server.packets.service import PacketService
from handoffrail_server.realtime import service as streams
from tests.conftest import packet_body

pytestmark = pytest.mark.postgres


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


async def _tenant(sessions: async_sessionmaker[AsyncSession]) -> str:
    tenant_id = f"t-{uuid.uuid4().hex[:8]}"
    async with unit_of_work(sessions) as session:
        now = datetime.now(UTC)
        session.add(Tenant(id=tenant_id, name=tenant_id, created_at=now, updated_at=now))
    return tenant_id


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
    tenant_id = await _tenant(sessions)

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
    tenant_id = await _tenant(sessions)
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
    tenant_id = await _tenant(sessions)

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
    tenant_id = await _tenant(sessions)

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
    tenant_id = await _tenant(sessions)
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
    tenant_id = await _tenant(sessions)
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
    tenant_id = await _tenant(sessions)

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
    tenant_id = await _tenant(sessions)
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
    tenant_id = await _tenant(sessions)
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
    tenant_id = await _tenant(sessions)
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
    tenant_id = await _tenant(sessions)
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


async def test_a_single_create_is_one_statement_that_commits_on_its_own(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await _tenant(sessions)
    now = datetime.now(UTC)
    async with unit_of_work(sessions) as session:
        for index, events in enumerate((["packet.created"], ["packet.claimed"])):
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
    async with unit_of_work(sessions) as session:
        service = PacketService(session, SystemClock(), tenant_id)
        body = PacketCreate.model_validate(packet_body(tags=["vip", "vip", "eu"]))
        packet = await service.create(body, last=True)
        lean = session.info[fast.LEAN_KEY]
        assert lean.finished  # written without BEGIN/COMMIT
        assert not lean.driver.is_in_transaction()
    async with unit_of_work(sessions) as session:
        tags = await session.scalars(select(PacketTag.tag).where(PacketTag.packet_id == packet.id))
        assert sorted(tags) == ["eu", "vip"]
        [event] = await session.scalars(
            select(PacketEvent).where(PacketEvent.packet_id == packet.id)
        )
        assert event.event_type == "created"
        assert (
            await session.scalar(
                select(func.count())
                .select_from(StreamEvent)
                .where(StreamEvent.packet_id == packet.id)
            )
            == 1
        )
        [delivery] = await session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.packet_id == packet.id)
        )
        assert delivery.webhook_id == f"{tenant_id}-hook-0"  # only the subscribed endpoint
        assert (delivery.status, delivery.attempts, delivery.event_type) == (
            "pending",
            0,
            "packet.created",
        )
        assert delivery.payload["packet_id"] == str(packet.id)
        assert delivery.payload["metadata"]["source_agent"]["id"] == "sales-01"
        assert delivery.next_attempt_at == delivery.created_at


async def _new_packet(sessions: async_sessionmaker[AsyncSession], tenant_id: str) -> Packet:
    async with unit_of_work(sessions) as session:
        service = PacketService(session, SystemClock(), tenant_id)
        return await service.create(PacketCreate.model_validate(packet_body()), last=True)


async def test_a_single_claim_is_one_statement_and_a_lost_one_writes_nothing(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await _tenant(sessions)
    packet = await _new_packet(sessions, tenant_id)
    claim = {"status": "claimed", "claimed_by_agent_id": "billing-01"}
    async with unit_of_work(sessions) as session:
        service = PacketService(session, SystemClock(), tenant_id)
        stale = replaced(packet, row_version=packet.row_version - 1)
        lost = await service.change_and_record(
            stale, claim, "claimed", "agent:billing-01", from_status="created", last=True
        )
        assert lost is None  # the row moved on: nothing written, and the unit may go on
        lean = session.info[fast.LEAN_KEY]
        assert not lean.finished
        won = await service.change_and_record(
            packet, claim, "claimed", "agent:billing-01", from_status="created", last=True
        )
        assert won is not None
        assert (won.status, won.row_version) == ("claimed", packet.row_version + 1)
        assert lean.finished  # no BEGIN/COMMIT: the statement committed on its own
        assert not lean.driver.is_in_transaction()
    async with unit_of_work(sessions) as session:
        events = await session.scalars(
            select(PacketEvent.event_type)
            .where(PacketEvent.packet_id == packet.id)
            .order_by(PacketEvent.created_at)
        )
        assert list(events) == ["created", "claimed"]  # one history event per write that won
        streamed = await session.scalar(
            select(func.count()).select_from(StreamEvent).where(StreamEvent.packet_id == packet.id)
        )
        assert streamed == 2


async def test_a_claim_inside_a_transaction_joins_it_and_fails_with_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await _tenant(sessions)
    packet = await _new_packet(sessions, tenant_id)

    async def claim_then_fail() -> None:
        async with unit_of_work(sessions) as session:
            service = PacketService(session, SystemClock(), tenant_id)
            await usage.add_handoffs(session, tenant_id, "2026-11-23", 1, 10)
            won = await service.change_and_record(
                packet, {"status": "claimed"}, "claimed", "agent:x", last=True
            )
            assert won is not None
            assert not session.info[fast.LEAN_KEY].finished
            raise RuntimeError("roll back both")

    with pytest.raises(RuntimeError):
        await claim_then_fail()
    async with unit_of_work(sessions) as session:
        reread = await packets.get(session, tenant_id, packet.id)
        assert reread is not None
        assert (reread.status, reread.row_version) == ("created", packet.row_version)
        count = await session.scalar(
            select(func.count()).select_from(PacketEvent).where(PacketEvent.packet_id == packet.id)
        )
        assert count == 1


async def _written_for(session: AsyncSession, packet_id: uuid.UUID) -> dict[str, Any]:
    """What a claim wrote about a packet, less what differs between two claims of two packets
    (ids, times)."""
    packet = await packets.get(session, session.info["tenant"], packet_id)
    assert packet is not None
    [event] = await session.scalars(
        select(PacketEvent).where(
            PacketEvent.packet_id == packet_id, PacketEvent.event_type == "claimed"
        )
    )
    [stream] = await session.scalars(
        select(StreamEvent).where(
            StreamEvent.packet_id == packet_id, StreamEvent.event_type == "packet.claimed"
        )
    )
    [delivery] = await session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.packet_id == packet_id)
    )

    def timeless(metadata: dict[str, Any]) -> dict[str, Any]:
        assert metadata["claimed_at"]
        return {k: v for k, v in metadata.items() if k not in ("claimed_at", "created_at")}

    payload = dict(delivery.payload)
    assert payload.pop("packet_id") == str(packet_id)
    assert payload.pop("timestamp")
    return {
        "packet": (
            packet.status,
            packet.row_version,
            packet.target_agent_id,
            packet.claimed_by_agent_id,
            packet.claimed_at is not None,
            timeless(packet.packet_metadata),
        ),
        "history": (event.actor, event.from_status, event.to_status, event.details),
        "stream": (
            stream.status,
            stream.source_agent_id,
            stream.target_agent_id,
            {**stream.data, "metadata": timeless(stream.data["metadata"])},
        ),
        "outbox": (
            delivery.event_type,
            delivery.status,
            {**payload, "metadata": timeless(payload["metadata"])},
        ),
    }


async def test_claim_next_in_one_statement_writes_what_a_claim_by_id_writes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await _tenant(sessions)
    now = datetime.now(UTC)
    async with unit_of_work(sessions) as session:
        session.add(
            WebhookEndpoint(
                id=f"{tenant_id}-hook",
                tenant_id=tenant_id,
                url="https://example.com/hook",
                events=["packet.claimed"],
                secret_encrypted="x",
                active=True,
                created_at=now,
                updated_at=now,
            )
        )
    first = await _new_packet(sessions, tenant_id)
    second = await _new_packet(sessions, tenant_id)
    claimant = {"agent_id": "billing-01", "agent_name": "Billing", "framework": "crewai"}
    async with unit_of_work(sessions) as session:
        service = PacketService(session, SystemClock(), tenant_id)
        picked = await claims.claim_next(service, ClaimNext(**claimant), last=True)
        assert picked is not None
        assert picked.id == first.id  # the oldest of one priority
        assert (picked.status, picked.row_version) == ("claimed", first.row_version + 1)
        lean = session.info[fast.LEAN_KEY]
        assert lean.finished  # one statement, no BEGIN/COMMIT
        assert not lean.driver.is_in_transaction()
    async with unit_of_work(sessions) as session:
        service = PacketService(session, SystemClock(), tenant_id)
        await claims.claim(service, second.id, PacketClaim(**claimant), last=True)
    async with unit_of_work(sessions) as session:
        session.info["tenant"] = tenant_id
        assert await _written_for(session, first.id) == await _written_for(session, second.id)
    async with unit_of_work(sessions) as session:
        service = PacketService(session, SystemClock(), tenant_id)
        assert await claims.claim_next(service, ClaimNext(**claimant), last=True) is None
        assert not session.info[fast.LEAN_KEY].finished  # nothing written: it may go on
