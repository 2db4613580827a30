"""The raw asyncpg path's single writes (db/fast.py, `last=True`): a create, a claim and a
claim-next are each one statement that commits on its own, and write exactly what the slower
paths write."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handoffrail_server.clock import SystemClock
from handoffrail_server.db import fast
from handoffrail_server.db.models import (
    Packet,
    PacketEvent,
    PacketTag,
    StreamEvent,
    WebhookDelivery,
)
from handoffrail_server.db.rows import replaced
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.limits import repository as usage
from handoffrail_server.packets import claims
from handoffrail_server.packets import repository as packets
from handoffrail_server.packets.schemas import ClaimNext, PacketClaim, PacketCreate
from handoffrail_server.packets.service import PacketService
from tests.conftest import packet_body
from tests.integration.conftest import pg_tenant, subscribe

pytestmark = pytest.mark.postgres


async def test_a_single_create_is_one_statement_that_commits_on_its_own(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await pg_tenant(sessions)
    await subscribe(sessions, tenant_id, ["packet.created"], ["packet.claimed"])
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
    tenant_id = await pg_tenant(sessions)
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
    tenant_id = await pg_tenant(sessions)
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
    tenant_id = await pg_tenant(sessions)
    await subscribe(sessions, tenant_id, ["packet.claimed"])
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
