"""Group commit (db/group_commit.py): concurrent units' lone creates share a transaction, and
each unit still gets exactly its own outcome."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from handoffrail_server.clock import SystemClock
from handoffrail_server.db import fast, group_commit
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import Packet, PacketEvent, StreamEvent, WebhookDelivery
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.observability import metrics
from handoffrail_server.packets import claims
from handoffrail_server.packets.schemas import ClaimNext, PacketCreate
from handoffrail_server.packets.service import PacketService
from handoffrail_server.realtime.repository import XID_SPAN
from tests.conftest import packet_body
from tests.integration.conftest import pg_tenant, subscribe

pytestmark = pytest.mark.postgres


@pytest.fixture
async def grouped(migrated_pg: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(migrated_pg, pool_size=4, max_overflow=0, group_commit=True)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


def _engine(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    engine = sessions.kw["bind"]
    assert isinstance(engine, AsyncEngine)
    return engine


def _stats(sessions: async_sessionmaker[AsyncSession]) -> group_commit.Stats:
    stats = group_commit.stats(_engine(sessions))
    assert stats is not None
    return stats


async def _create(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, *, held: list[object] | None = None
) -> Packet:
    async with unit_of_work(sessions) as session:
        service = PacketService(session, SystemClock(), tenant_id)
        body = PacketCreate.model_validate(packet_body(tags=["vip"]))
        packet = await service.create(body, last=True)
        if held is not None:
            held.append(session.info[fast.LEAN_KEY].driver)
        return packet


async def _count(sessions: async_sessionmaker[AsyncSession], model: type, tenant_id: str) -> int:
    async with unit_of_work(sessions) as session:
        query = select(func.count()).select_from(model).where(model.tenant_id == tenant_id)  # type: ignore[attr-defined]
        return int(await session.scalar(query) or 0)


async def test_concurrent_creates_share_one_transaction_and_number_their_stream_events(
    grouped: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(grouped)
    await subscribe(grouped, tenant_id, ["packet.created"])
    stats = _stats(grouped)
    before = (stats.statements, stats.batches)
    observed = metrics.DB_GROUP_COMMIT_STATEMENTS._sum.get()
    held: list[object] = []
    packets = await asyncio.gather(*(_create(grouped, tenant_id, held=held) for _ in range(20)))
    assert held == [None] * 20  # no unit checked a connection out of its own
    assert stats.statements - before[0] == 20
    assert stats.batches - before[1] < 20  # fewer round trips than statements
    assert metrics.DB_GROUP_COMMIT_STATEMENTS._sum.get() - observed == 20  # operators see it
    assert group_commit._groups[_engine(grouped)].sending == 0  # every sender counted out
    async with unit_of_work(grouped) as session:
        stored = set(await session.scalars(select(Packet.id).where(Packet.tenant_id == tenant_id)))
        ids = list(
            await session.scalars(select(StreamEvent.id).where(StreamEvent.tenant_id == tenant_id))
        )
    assert stored == {packet.id for packet in packets}
    assert len(ids) == len(set(ids)) == 20
    transactions = {stream_id // XID_SPAN for stream_id in ids}
    assert len(transactions) < 20  # several events of one transaction: renumbered, unique
    for table in (PacketEvent, WebhookDelivery):
        assert await _count(grouped, table, tenant_id) == 20


async def test_claim_next_in_batches_claims_each_packet_once_for_the_unit_that_gets_it(
    grouped: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = await pg_tenant(grouped)
    await subscribe(grouped, tenant_id, ["packet.claimed"])
    created = {(await _create(grouped, tenant_id)).id for _ in range(12)}
    stats = _stats(grouped)
    before = (stats.statements, stats.batches)
    handed: list[bool] = []
    original = group_commit.commit

    async def spy(engine: AsyncEngine, statement: fast.Statement, *, beside: bool = True) -> Any:
        handed.append(beside)
        return await original(engine, statement, beside=beside)

    monkeypatch.setattr(group_commit, "commit", spy)

    async def claim(worker: int) -> tuple[Packet | None, bool]:
        async with unit_of_work(grouped) as session:
            service = PacketService(session, SystemClock(), tenant_id)
            wanted = ClaimNext(agent_id=f"w{worker}", agent_name="Worker")
            picked = await claims.claim_next(service, wanted, last=True)
            return picked, session.info[fast.LEAN_KEY].finished

    results = await asyncio.gather(*(claim(worker) for worker in range(16)))
    # claim-next batches are never split to run beside each other: they would skip each
    # other's locked candidates
    assert handed == [False] * 16
    assert stats.statements - before[0] == 16
    assert stats.batches - before[1] < 16
    won = {worker: packet for worker, (packet, _) in enumerate(results) if packet is not None}
    assert len(won) == 12
    assert {packet.id for packet in won.values()} == created  # each packet once
    for worker, packet in won.items():  # each unit got the row its own statement claimed
        assert (packet.status, packet.claimed_by_agent_id) == ("claimed", f"w{worker}")
    assert [finished for packet, finished in results if packet is None] == [False] * 4
    async with unit_of_work(grouped) as session:
        events = list(
            await session.scalars(
                select(PacketEvent.packet_id).where(
                    PacketEvent.tenant_id == tenant_id, PacketEvent.event_type == "claimed"
                )
            )
        )
        stream_ids = list(
            await session.scalars(
                select(StreamEvent.id).where(
                    StreamEvent.tenant_id == tenant_id, StreamEvent.event_type == "packet.claimed"
                )
            )
        )
        deliveries = list(
            await session.scalars(
                select(WebhookDelivery.packet_id).where(
                    WebhookDelivery.tenant_id == tenant_id,
                    WebhookDelivery.event_type == "packet.claimed",
                )
            )
        )
    assert sorted(events) == sorted(created)
    assert len(deliveries) == 12
    assert set(deliveries) == created
    assert len(stream_ids) == len(set(stream_ids)) == 12


@pytest.fixture
def one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """What is handed over in one turn goes as one batch: not split in half to run beside
    another (`_take`), as for statements that contend with each other."""
    monkeypatch.setattr(
        group_commit, "commit_last", partial(group_commit.commit_last, beside=False)
    )


@pytest.mark.usefixtures("one_batch")
async def test_a_refused_batch_runs_each_statement_alone_for_its_own_outcome(
    grouped: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(grouped)
    stats = _stats(grouped)
    retried, batches = stats.retried, stats.batches
    outcomes = await asyncio.gather(  # as many as the pool's 4 connection slots: one batch
        *(_create(grouped, tenant_id) for _ in range(2)),
        _create(grouped, f"missing-{uuid.uuid4().hex[:8]}"),  # no such tenant: a foreign key
        _create(grouped, tenant_id),
        return_exceptions=True,
    )
    failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(failed) == 1
    assert isinstance(outcomes[2], sa_exc.IntegrityError)
    assert stats.batches - batches == 1
    assert stats.retried - retried == 4  # the batch was refused: each statement again, alone
    assert await _count(grouped, Packet, tenant_id) == 3
    assert await _count(grouped, StreamEvent, tenant_id) == 3


@pytest.mark.usefixtures("one_batch")
async def test_a_lost_connection_fails_the_batch_and_is_not_retried(
    grouped: async_sessionmaker[AsyncSession], migrated_pg: str
) -> None:
    tenant_id = await pg_tenant(grouped)
    await _create(grouped, tenant_id)  # the pool now holds idle connections
    admin = await asyncpg.connect(migrated_pg.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    stats = _stats(grouped)
    retried = stats.retried
    outcomes = await asyncio.gather(
        *(_create(grouped, tenant_id) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(outcome, sa_exc.OperationalError) for outcome in outcomes), outcomes
    assert all(outcome.connection_invalidated for outcome in outcomes)  # type: ignore[union-attr]
    assert stats.retried == retried  # the commit may have happened: never sent twice
    assert await _count(grouped, Packet, tenant_id) == 1
    await _create(grouped, tenant_id)  # the dead connection left the pool
    assert await _count(grouped, Packet, tenant_id) == 2


async def test_a_unit_cancelled_before_its_batch_is_sent_is_left_out(
    grouped: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(grouped)
    task = asyncio.ensure_future(_create(grouped, tenant_id))
    await asyncio.sleep(0)  # the unit has handed its statement over; the batch is not sent
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _create(grouped, tenant_id)
    assert await _count(grouped, Packet, tenant_id) == 1


async def test_a_unit_holding_a_connection_writes_on_it(
    grouped: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(grouped)
    parent = await _create(grouped, tenant_id)
    stats = _stats(grouped)
    statements = stats.statements
    async with unit_of_work(grouped) as session:
        service = PacketService(session, SystemClock(), tenant_id)
        body = PacketCreate.model_validate({**packet_body(), "parent_packet_id": str(parent.id)})
        await service.create(body, last=True)  # reads its parent first, on its own connection
        lean = session.info[fast.LEAN_KEY]
        assert lean.driver is not None
        assert lean.finished
    assert stats.statements == statements
    assert await _count(grouped, Packet, tenant_id) == 2


async def test_a_later_write_of_a_unit_that_handed_its_last_over_is_refused(
    grouped: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(grouped)

    async def create_then_write() -> None:
        async with unit_of_work(grouped) as session:
            service = PacketService(session, SystemClock(), tenant_id)
            await service.create(PacketCreate.model_validate(packet_body()), last=True)
            await fast.connection(session)

    with pytest.raises(fast.UnitFinished):
        await create_then_write()
    assert await _count(grouped, Packet, tenant_id) == 1  # what was handed over committed


async def test_off_by_default_for_engines_not_asking_for_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    assert group_commit.stats(_engine(sessions)) is None
    tenant_id = await pg_tenant(sessions)
    held: list[object] = []
    await _create(sessions, tenant_id, held=held)
    assert held[0] is not None  # its own connection, as before


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ((2, "two"), sa_exc.DataError),  # refused by the driver, before it reaches the server
        ((1, 5), sa_exc.IntegrityError),  # refused by the server: a duplicate key
    ],
)
async def test_a_statement_refused_in_its_batch_fails_alone(
    grouped: async_sessionmaker[AsyncSession],
    bad: tuple[object, object],
    error: type[Exception],
) -> None:
    engine = _engine(grouped)
    table = f"probe_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as connection:
        await connection.exec_driver_sql(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
    insert = f"INSERT INTO {table} VALUES ($1, $2)"  # noqa: S608  # nosec B608 - test table
    await group_commit.commit(engine, fast.Statement(insert, (1, 1)))
    outcomes = await asyncio.gather(
        group_commit.commit(engine, fast.Statement(insert, (10, 1))),
        group_commit.commit(engine, fast.Statement(insert, bad)),
        group_commit.commit(engine, fast.Statement(insert, (11, 1))),
        return_exceptions=True,
    )
    assert outcomes[0] == outcomes[2] == []
    assert isinstance(outcomes[1], error)
    async with engine.connect() as connection:
        rows = await connection.exec_driver_sql(f"SELECT id FROM {table} ORDER BY id")  # noqa: S608  # nosec B608 - test table
        assert [row[0] for row in rows] == [1, 10, 11]
