"""The real `AsyncHandoffRailClient` (handoffrail-sdk 0.3.0) against a live server, both DBs.

Same HTTP as the sync client (see test_sdk_sync.py for the full surface); this proves the coroutine
API end to end: lifecycle, lists, search, batches, schemas, keys, tenants and error mapping.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from handoffrail.sdk import (
    AsyncHandoffRailClient,
    AuthenticationError,
    ChainBuilder,
    NotFoundError,
    PacketUpdate,
    SearchOptions,
    ServerError,
    ValidationError,
)
from handoffrail.sdk.models import Decision

from tests.conftest import LiveServer
from tests.contract.sdk_support import (
    CLAIMANT,
    REFUND_SCHEMA,
    async_client,
    full_packet,
    packet,
    unique,
)


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[AsyncHandoffRailClient]:
    """The async SDK client with the operator key."""
    async with async_client(live_server) as sdk:
        yield sdk


async def start(client: AsyncHandoffRailClient, packet_id: uuid.UUID) -> None:
    """Claim, then move to in_progress."""
    await client.claim_packet(packet_id, agent_id=CLAIMANT[0], agent_name=CLAIMANT[1])
    await client.update_packet(packet_id, PacketUpdate(status="in_progress"))


async def test_full_lifecycle_through_the_coroutine_api(client: AsyncHandoffRailClient) -> None:
    payload = full_packet()
    created = await client.create_packet(payload)
    assert created.status == "created"
    assert created.metadata == payload.metadata
    assert created.context == payload.context
    assert await client.get_packet(created.id) == created

    claimed = await client.claim_packet(created.id, agent_id="async-01", agent_name="Async")
    assert (claimed.status, claimed.metadata.target_agent.id) == ("claimed", "async-01")
    with pytest.raises(ValidationError) as early:
        await client.complete_packet(created.id)
    assert early.value.status_code == 400

    update = PacketUpdate(
        status="in_progress",
        decisions=[Decision(id="d2", decision="Escalate", rationale="amount")],
    )
    working = await client.update_packet(created.id, update)
    assert working.status == "in_progress"
    assert [d.id for d in working.decisions] == ["d1", "d2"]
    done = await client.complete_packet(created.id)
    assert done.status == "completed"
    assert done.metadata.completed_at is not None

    history = await client.get_history(created.id)
    events = [event.event_type for event in history.events]
    assert events == ["created", "claimed", "in_progress", "completed"]
    audit = await client.list_audit_log(packet_id=created.id, action="completed")
    assert [entry.actor for entry in audit.entries] == ["agent:async-01"]

    await client.delete_packet(created.id)
    assert (await client.get_packet(created.id)).status == "expired"
    with pytest.raises(ValidationError) as again:
        await client.delete_packet(created.id)
    assert again.value.status_code == 409


async def test_hitl_respond_and_chain_handoff(client: AsyncHandoffRailClient) -> None:
    created = await client.create_packet(
        packet(conversation=[{"role": "user", "content": "refund please"}], hitl_reason="Large")
    )
    assert created.status == "awaiting_human"
    assert [p.id for p in (await client.get_awaiting()).packets] == [created.id]
    answered = await client.respond_to_hitl(
        created.id, response="approve", responded_by="alice", notes="fine"
    )
    assert answered.status == "claimed"
    assert answered.hitl is not None
    assert (answered.hitl.response, answered.hitl.responded_by) == ("approve", "alice")
    assert (await client.get_awaiting()).total == 0

    request = (
        ChainBuilder()
        .from_("billing-01", "BillingBot")
        .to("ledger-01", "LedgerBot")
        .with_summary("Book it")
        .with_conversation([{"role": "agent", "content": "approved"}])
        .build()
    )
    child = await client.chain_handoff(created.id, request)
    assert child.parent_packet_id == created.id
    turns = [turn.content for turn in child.context.conversation_state]
    assert turns == ["refund please", "approved"]


async def test_list_filters_and_cursor_pagination(client: AsyncHandoffRailClient) -> None:
    ids = [(await client.create_packet(packet(f"p{n}", tags=["walk"]))).id for n in range(5)]
    urgent = await client.create_packet(packet("urgent", priority="critical", tags=["walk", "vip"]))
    await start(client, urgent.id)

    assert [p.id for p in (await client.list_packets(tags="walk,vip")).packets] == [urgent.id]
    assert (await client.list_packets(priority="critical")).total == 1
    in_progress = await client.list_packets(status="in_progress,failed")
    assert [p.id for p in in_progress.packets] == [urgent.id]
    assert (await client.list_packets(target_agent=CLAIMANT[0])).total == 1
    assert (await client.list_packets(source_agent="sales-01")).total == 6
    after = await client.list_packets(created_after=urgent.created_at.isoformat())
    assert [p.id for p in after.packets] == [urgent.id]

    seen: list[uuid.UUID] = []
    cursor: str | None = None
    for _page in range(10):
        page = await client.list_packets(status="created", limit=2, cursor=cursor)
        seen.extend(p.id for p in page.packets)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == list(reversed(ids))


async def test_concurrent_coroutine_claims_have_exactly_one_winner(
    client: AsyncHandoffRailClient,
) -> None:
    created = await client.create_packet(packet())

    async def try_claim(n: int) -> str:
        try:
            await client.claim_packet(created.id, agent_id=f"racer-{n}", agent_name="Racer")
        except ValidationError as exc:
            return f"lost:{exc.status_code}"
        return "won"

    outcomes = await asyncio.gather(*(try_claim(n) for n in range(5)))
    assert sorted(outcomes) == ["lost:409"] * 4 + ["won"]
    holder = (await client.get_packet(created.id)).metadata.target_agent.id
    with pytest.raises(ValidationError) as caught:
        await client.claim_packet(created.id, agent_id="late", agent_name="Late")
    assert caught.value.status_code == 409
    assert holder in caught.value.message


async def test_search_and_batches(client: AsyncHandoffRailClient) -> None:
    batch = await client.batch_create_packets(
        [packet("Refund request one"), packet("Refund request two", priority="high")]
    )
    assert [p.context.summary for p in batch.created] == [
        "Refund request one",
        "Refund request two",
    ]
    assert batch.errors == []
    found = await client.search_packets("refund-request!")
    assert found.total == 2
    high = await client.search_packets("refund", SearchOptions(priority="high", limit=5))
    assert [p.context.summary for p in high.packets] == ["Refund request two"]

    ids = [str(p.id) for p in batch.created]
    missing = str(uuid.uuid4())
    claimed = await client.batch_claim_packets([*ids, missing], "batcher", "Batcher", "crewai")
    assert [str(p.id) for p in claimed.claimed] == ids
    assert [error.packet_id for error in claimed.errors] == [missing]
    await client.update_packet(ids[0], PacketUpdate(status="in_progress"))
    completed = await client.batch_complete_packets(ids)
    assert [str(p.id) for p in completed.completed] == [ids[0]]
    assert [error.packet_id for error in completed.errors] == [ids[1]]


async def test_schema_registry_validates_packet_context(client: AsyncHandoffRailClient) -> None:
    schema = await client.create_schema(name="refund", json_schema=REFUND_SCHEMA, version=3)
    assert schema.version == 3
    assert (await client.get_schema(schema.id)) == schema
    assert [s.id for s in (await client.list_schemas()).schemas] == [schema.id]

    good = packet().model_copy(update={"schema_id": schema.id})
    good.context.custom = {"order_id": 7}
    assert (await client.create_packet(good)).context.custom == {"order_id": 7}
    bad = packet().model_copy(update={"schema_id": schema.id})
    with pytest.raises(ServerError) as caught:
        await client.create_packet(bad)
    assert caught.value.status_code == 422


async def test_keys_and_tenants_are_scoped(
    live_server: LiveServer, client: AsyncHandoffRailClient
) -> None:
    mine = await client.create_tenant(name=unique("mine"), tier="business")
    other = await client.create_tenant(name=unique("other"))
    assert {mine.id, other.id} <= {t.id for t in await client.list_tenants()}
    renamed = await client.update_tenant(mine.id, name=mine.name + "-2")
    assert renamed.name == mine.name + "-2"
    key = await client.create_api_key(name="mine admin", tenant_id=mine.id, role="admin")
    assert key.key is not None
    assert [k.id for k in await client.list_tenant_keys(mine.id)] == [key.id]
    assert all(k.tenant_id == "default" for k in await client.list_api_keys())

    async with async_client(live_server, key.key) as admin:
        assert (await admin.get_tenant(mine.id)).name == renamed.name
        with pytest.raises(NotFoundError):
            await admin.get_tenant(other.id)
        assert [t.id for t in await admin.list_tenants()] == [mine.id]
        assert [k.id for k in await admin.list_api_keys()] == [key.id]

    await client.delete_tenant(other.id)
    with pytest.raises(NotFoundError):
        await client.get_tenant(other.id)


async def test_error_mapping(live_server: LiveServer, client: AsyncHandoffRailClient) -> None:
    with pytest.raises(NotFoundError) as missing:
        await client.get_packet(uuid.uuid4())
    assert missing.value.status_code == 404

    created = await client.create_packet(packet())
    with pytest.raises(ValidationError) as illegal:
        await client.update_packet(created.id, PacketUpdate(status="completed"))
    assert illegal.value.status_code == 400
    await client.delete_packet(created.id)
    with pytest.raises(NotFoundError) as gone:
        await client.claim_packet(created.id, agent_id="a", agent_name="A")
    assert gone.value.status_code == 410

    for key in ("", "hr_" + "y" * 43):
        async with async_client(live_server, key) as stranger:
            with pytest.raises(AuthenticationError) as denied:
                await stranger.list_packets()
            assert denied.value.status_code == 401
