"""The real sync `HandoffRailClient` (handoffrail-sdk 0.3.0) against a live server, both DBs.

Every REST method of CONTRACT.md §9 except webhooks and streaming, plus the error mapping.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from handoffrail.sdk import (
    ChainBuilder,
    HandoffRailClient,
    NotFoundError,
    PacketBuilder,
    PacketCreate,
    PacketUpdate,
    SearchOptions,
    ServerError,
    ValidationError,
)
from handoffrail.sdk.models import (
    Actions,
    CompletedAction,
    Decision,
    FailedAction,
    HitlCheckpoint,
    PacketContext,
    PendingAction,
)

from tests.conftest import packet_body
from tests.contract.sdk_support import (
    CLAIMANT,
    claim,
    full_packet,
    packet,
    start,
)


def test_packet_builder_packet_round_trips_every_section(client: HandoffRailClient) -> None:
    payload = full_packet()
    created = client.create_packet(payload)
    assert (created.status, created.version, created.parent_packet_id) == ("created", "1.0.0", None)
    assert created.metadata == payload.metadata
    assert (created.context, created.decisions) == (payload.context, payload.decisions)
    assert (created.actions, created.dependencies) == (payload.actions, payload.dependencies)
    assert created.hitl is None
    assert created.created_at.tzinfo is not None
    assert client.get_packet(created.id) == created
    assert client.get_packet(str(created.id)) == created
    plain = PacketCreate.from_dict(packet_body("Plain body", tags=["x"], priority="low"))
    from_plain = client.create_packet(plain)
    assert (from_plain.metadata.priority, from_plain.metadata.tags) == ("low", ["x"])


def test_unknown_packet_id_raises_not_found_on_every_route(client: HandoffRailClient) -> None:
    missing = uuid.uuid4()
    chain = ChainBuilder().from_("a", "A").to("b", "B").with_summary("next").build()
    calls: tuple[Callable[[], object], ...] = (
        lambda: client.get_packet(missing),
        lambda: client.get_history(missing),
        lambda: client.update_packet(missing, PacketUpdate(status="failed")),
        lambda: client.complete_packet(missing),
        lambda: client.delete_packet(missing),
        lambda: claim(client, missing),
        lambda: client.respond_to_hitl(missing, response="ok", responded_by="alice"),
        lambda: client.chain_handoff(missing, chain),
    )
    for call in calls:
        with pytest.raises(NotFoundError) as caught:
            call()
        assert caught.value.status_code == 404


def test_list_packets_filters_by_comma_separated_status(client: HandoffRailClient) -> None:
    fresh = client.create_packet(packet("fresh"))
    claimed = client.create_packet(packet("claimed"))
    claim(client, claimed.id)
    failed = client.create_packet(packet("failed"))
    client.update_packet(failed.id, PacketUpdate(status="failed"))

    page = client.list_packets(status="claimed,failed")
    assert {p.id for p in page.packets} == {claimed.id, failed.id}
    assert page.total == 2
    assert [p.id for p in client.list_packets(status="created").packets] == [fresh.id]


def test_list_packets_filters_by_agents_and_priority(client: HandoffRailClient) -> None:
    first = client.create_packet(packet(source=("a-1", "A"), target=("b-1", "B"), priority="high"))
    second = client.create_packet(packet(source=("a-2", "A2"), target=("b-1", "B")))
    client.create_packet(packet(source=("a-2", "A2"), target=("b-2", "B2")))

    assert [p.id for p in client.list_packets(source_agent="a-1").packets] == [first.id]
    by_target = client.list_packets(target_agent="b-1")
    assert {p.id for p in by_target.packets} == {first.id, second.id}
    both = client.list_packets(source_agent="a-2", target_agent="b-1")
    assert [p.id for p in both.packets] == [second.id]
    assert [p.id for p in client.list_packets(priority="high").packets] == [first.id]


def test_list_packets_tags_filter_requires_every_tag(client: HandoffRailClient) -> None:
    both = client.create_packet(packet(tags=["refund", "vip"]))
    refund = client.create_packet(packet(tags=["refund"]))
    client.create_packet(packet(tags=["vip"]))

    assert [p.id for p in client.list_packets(tags="refund,vip").packets] == [both.id]
    assert {p.id for p in client.list_packets(tags="refund").packets} == {both.id, refund.id}
    assert client.list_packets(tags="refund,vip,missing").total == 0


def test_list_packets_created_after_and_before_are_inclusive(client: HandoffRailClient) -> None:
    first = client.create_packet(packet("first"))
    second = client.create_packet(packet("second"))
    third = client.create_packet(packet("third"))

    after = client.list_packets(created_after=second.created_at.isoformat())
    assert [p.id for p in after.packets] == [third.id, second.id]
    before = client.list_packets(created_before=second.created_at.isoformat())
    assert [p.id for p in before.packets] == [second.id, first.id]
    window = client.list_packets(
        created_after=second.created_at.isoformat(), created_before=second.created_at.isoformat()
    )
    assert [p.id for p in window.packets] == [second.id]


def test_list_packets_offset_pagination_is_newest_first(client: HandoffRailClient) -> None:
    ids = [client.create_packet(packet(f"packet {n}")).id for n in range(5)]
    newest_first = list(reversed(ids))

    page = client.list_packets(limit=2, offset=2)
    assert [p.id for p in page.packets] == newest_first[2:4]
    assert (page.total, page.limit, page.offset) == (5, 2, 2)
    assert [p.id for p in client.list_packets().packets] == newest_first


def test_cursor_pagination_walks_every_page_once(client: HandoffRailClient) -> None:
    ids = [client.create_packet(packet(f"packet {n}", tags=["walk"])).id for n in range(5)]
    client.create_packet(packet("not tagged"))

    seen: list[uuid.UUID] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _page in range(10):
        page = client.list_packets(tags="walk", limit=2, cursor=cursor)
        assert page.total == 5
        seen.extend(p.id for p in page.packets)
        sizes.append(len(page.packets))
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sizes == [2, 2, 1]
    assert seen == list(reversed(ids))
    with pytest.raises(ValidationError) as caught:
        client.list_packets(cursor="not-a-cursor")
    assert caught.value.status_code == 400


def test_audit_log_lists_events_newest_first_with_filters(client: HandoffRailClient) -> None:
    before_all = datetime.now(UTC).isoformat()
    created = client.create_packet(packet())
    other = client.create_packet(packet("other"))
    claim(client, created.id)

    log = client.list_audit_log(packet_id=created.id)
    assert [entry.action for entry in log.entries] == ["claimed", "created"]
    assert log.total == 2
    assert all(entry.resource == "packet" for entry in log.entries)
    assert all(entry.packet_id == str(created.id) for entry in log.entries)

    claims = client.list_audit_log(action="claimed")
    assert [entry.packet_id for entry in claims.entries] == [str(created.id)]
    assert claims.entries[0].actor == f"agent:{CLAIMANT[0]}"
    by_actor = client.list_audit_log(actor=f"agent:{CLAIMANT[0]}")
    assert [entry.action for entry in by_actor.entries] == ["claimed"]

    everything = client.list_audit_log(created_after=before_all)
    assert everything.total == 3
    assert client.list_audit_log(created_before=before_all).total == 0
    paged = client.list_audit_log(limit=1, offset=1)
    assert (paged.total, paged.limit, paged.offset) == (3, 1, 1)
    assert [entry.packet_id for entry in paged.entries] == [str(other.id)]


def test_claim_replaces_target_agent_with_claimant(client: HandoffRailClient) -> None:
    created = client.create_packet(packet())
    claimed = client.claim_packet(
        created.id, agent_id="billing-07", agent_name="Billing Seven", framework="crewai"
    )
    assert claimed.status == "claimed"
    assert claimed.metadata.target_agent.id == "billing-07"
    assert claimed.metadata.target_agent.name == "Billing Seven"
    assert claimed.metadata.target_agent.framework == "crewai"
    assert claimed.metadata.claimed_at is not None
    assert client.list_packets(target_agent="billing-07").total == 1


def test_second_claim_raises_409_naming_the_holder(client: HandoffRailClient) -> None:
    created = client.create_packet(packet())
    client.claim_packet(created.id, agent_id="holder-01", agent_name="Holder")
    with pytest.raises(ValidationError) as caught:
        client.claim_packet(created.id, agent_id="late-01", agent_name="Latecomer")
    assert caught.value.status_code == 409
    assert "holder-01" in caught.value.message
    # as from the original server: the holder under `detail` (CONTRACT.md §2)
    body = caught.value.response_body
    assert body is not None
    assert body["detail"]["claimed_by"]["id"] == "holder-01"
    assert client.get_packet(created.id).metadata.target_agent.id == "holder-01"


def test_claim_of_soft_deleted_packet_raises_410_not_found(client: HandoffRailClient) -> None:
    created = client.create_packet(packet())
    client.delete_packet(created.id)
    with pytest.raises(NotFoundError) as caught:
        claim(client, created.id)
    assert caught.value.status_code == 410


def test_complete_straight_after_claim_raises_400(client: HandoffRailClient) -> None:
    created = client.create_packet(packet())
    claim(client, created.id)
    with pytest.raises(ValidationError) as caught:
        client.complete_packet(created.id)
    assert caught.value.status_code == 400
    assert "in_progress" in caught.value.message
    assert client.get_packet(created.id).status == "claimed"


def test_invalid_transition_raises_400_and_changes_nothing(client: HandoffRailClient) -> None:
    created = client.create_packet(packet())
    with pytest.raises(ValidationError) as caught:
        client.update_packet(created.id, PacketUpdate(status="completed"))
    assert caught.value.status_code == 400
    assert "'created' to 'completed'" in caught.value.message
    client.update_packet(created.id, PacketUpdate(status="failed"))
    with pytest.raises(ValidationError):
        client.update_packet(created.id, PacketUpdate(status="in_progress"))
    assert client.get_packet(created.id).status == "failed"
    with pytest.raises(ValidationError) as caught:
        claim(client, created.id)
    assert caught.value.status_code == 400


def test_claim_start_complete_lifecycle_is_recorded_in_history(client: HandoffRailClient) -> None:
    created = client.create_packet(packet())
    started = start(client, created.id)
    assert started.status == "in_progress"
    done = client.complete_packet(created.id)
    assert done.status == "completed"
    assert done.metadata.completed_at is not None

    history = client.get_history(created.id)
    assert history.packet_id == str(created.id)
    events = [event.event_type for event in history.events]
    assert events == ["created", "claimed", "in_progress", "completed"]
    assert history.events[1].actor == f"agent:{CLAIMANT[0]}"
    assert all(event.packet_id == str(created.id) for event in history.events)


def test_update_packet_merges_decisions_by_id(client: HandoffRailClient) -> None:
    payload = (
        PacketBuilder()
        .from_("sales-01", "SalesBot")
        .to("billing-01", "BillingBot")
        .with_summary("Refund")
        .with_decision("Refund approved", rationale="VIP")
        .with_decision("Notify customer", rationale="Policy")
        .build()
    )
    created = client.create_packet(payload)
    update = PacketUpdate(
        decisions=[
            Decision(id="d1", decision="Refund denied", rationale="Fraud check failed"),
            Decision(id="d3", decision="Escalate", rationale="Manager review"),
        ]
    )
    updated = client.update_packet(created.id, update)
    merged = [(d.id, d.decision) for d in updated.decisions]
    assert merged == [("d1", "Refund denied"), ("d2", "Notify customer"), ("d3", "Escalate")]
    assert updated.status == "created"
    assert client.get_packet(created.id).decisions == updated.decisions


def test_update_packet_replaces_actions_and_context(client: HandoffRailClient) -> None:
    payload = (
        PacketBuilder()
        .from_("sales-01", "SalesBot")
        .to("billing-01", "BillingBot")
        .with_summary("Refund")
        .with_custom({"order_id": 1})
        .with_action("Issue refund", assignee="billing-01")
        .with_action("Email customer", assignee="mailer")
        .build()
    )
    created = client.create_packet(payload)
    actions = Actions(
        pending=[PendingAction(id="a2", description="Email customer", assignee="mailer")],
        completed=[CompletedAction(id="a1", description="Issue refund", result="refunded")],
        failed=[FailedAction(id="a9", description="Call", error="no answer", retries_remaining=1)],
    )
    context = PacketContext(summary="Refund issued", custom={"order_id": 2})
    updated = client.update_packet(created.id, PacketUpdate(actions=actions, context=context))
    assert updated.actions == actions
    assert updated.context == context
    assert updated.context.conversation_state == []

    cleared = client.update_packet(created.id, PacketUpdate(actions=Actions()))
    assert cleared.actions == Actions()


def test_delete_soft_deletes_and_second_delete_is_409(client: HandoffRailClient) -> None:
    created = client.create_packet(packet())
    assert client.delete_packet(created.id) is None
    assert client.get_packet(created.id).status == "expired"
    with pytest.raises(ValidationError) as caught:
        client.delete_packet(created.id)
    assert caught.value.status_code == 409
    assert client.get_history(created.id).events[-1].event_type == "expired"


def test_hitl_packet_awaits_a_human_until_responded(client: HandoffRailClient) -> None:
    created = client.create_packet(packet(hitl_reason="Refund above limit"))
    assert created.status == "awaiting_human"
    assert created.hitl is not None
    assert created.hitl.required is True
    assert created.hitl.options == ["approve", "deny"]
    assert [p.id for p in client.get_awaiting().packets] == [created.id]

    answered = client.respond_to_hitl(
        created.id, response="approve", responded_by="alice", notes="ok"
    )
    assert answered.status == "claimed"
    assert answered.hitl is not None
    assert (answered.hitl.response, answered.hitl.responded_by) == ("approve", "alice")
    assert answered.hitl.notes == "ok"
    assert answered.hitl.responded_at is not None
    assert client.get_awaiting().total == 0
    last = client.get_history(created.id).events[-1]
    assert (last.event_type, last.actor) == ("hitl_responded", "human:alice")

    with pytest.raises(ValidationError) as caught:
        client.respond_to_hitl(created.id, response="deny", responded_by="bob")
    assert caught.value.status_code == 409
    with pytest.raises(ValidationError) as caught:
        client.respond_to_hitl(client.create_packet(packet()).id, response="x", responded_by="b")
    assert caught.value.status_code == 409


def test_get_awaiting_lists_oldest_first_with_pagination(client: HandoffRailClient) -> None:
    ids = [client.create_packet(packet(f"p{n}", hitl_reason="check")).id for n in range(3)]
    client.create_packet(packet("no human needed"))
    page = client.get_awaiting()
    assert [p.id for p in page.packets] == ids
    assert page.total == 3
    second = client.get_awaiting(limit=1, offset=1)
    assert [p.id for p in second.packets] == [ids[1]]
    assert (second.limit, second.offset, second.next_cursor) == (1, 1, None)


def test_chain_child_inherits_parent_conversation_first(client: HandoffRailClient) -> None:
    parent = client.create_packet(
        packet(conversation=[{"role": "user", "content": "refund please"}])
    )
    request = (
        ChainBuilder()
        .from_("billing-01", "BillingBot")
        .to("ledger-01", "LedgerBot")
        .with_summary("Book the refund")
        .with_priority("high")
        .with_tags(["ledger"])
        .with_conversation([{"role": "agent", "content": "refund approved"}])
        .with_decision("Book it", rationale="approved")
        .with_action("Post entry", assignee="ledger-01")
        .build()
    )
    child = client.chain_handoff(parent.id, request)
    assert child.parent_packet_id == parent.id
    assert child.status == "created"
    turns = [turn.content for turn in child.context.conversation_state]
    assert turns == ["refund please", "refund approved"]
    assert child.metadata.tags == ["ledger"]
    assert child.decisions == request.decisions
    assert [e.event_type for e in client.get_history(parent.id).events] == ["created", "chained"]


def test_chain_from_a_finished_parent_with_hitl_starts_awaiting_human(
    client: HandoffRailClient,
) -> None:
    parent = client.create_packet(packet())
    start(client, parent.id)
    client.complete_packet(parent.id)
    request = (
        ChainBuilder()
        .from_("billing-01", "BillingBot")
        .to("ledger-01", "LedgerBot")
        .with_summary("Needs sign-off")
        .with_hitl(reason="Large amount", question="Sign off?")
        .build()
    )
    child = client.chain_handoff(str(parent.id), request)
    assert child.status == "awaiting_human"


def test_batch_create_reports_invalid_packets_by_index(client: HandoffRailClient) -> None:
    empty_reason = packet("bad hitl")
    empty_reason.hitl = HitlCheckpoint(required=True, reason="")
    orphan = packet("orphan").model_copy(update={"parent_packet_id": uuid.uuid4()})
    result = client.batch_create_packets(
        [packet("one"), empty_reason, packet("two", hitl_reason="check"), orphan]
    )
    assert [p.context.summary for p in result.created] == ["one", "two"]
    assert [p.status for p in result.created] == ["created", "awaiting_human"]
    assert [error.index for error in result.errors] == [1, 3]
    assert all(error.error for error in result.errors)
    assert client.list_packets().total == 2


def test_batch_claim_reports_per_item_errors(client: HandoffRailClient) -> None:
    first = client.create_packet(packet("first"))
    second = client.create_packet(packet("second"))
    taken = client.create_packet(packet("taken"))
    claim(client, taken.id)
    missing = uuid.uuid4()

    result = client.batch_claim_packets(
        [str(first.id), str(taken.id), str(second.id), str(missing)],
        agent_id="batcher-01",
        agent_name="Batcher",
    )
    assert [p.id for p in result.claimed] == [first.id, second.id]
    assert all(p.metadata.target_agent.id == "batcher-01" for p in result.claimed)
    assert [error.packet_id for error in result.errors] == [str(taken.id), str(missing)]
    assert client.get_packet(taken.id).metadata.target_agent.id == CLAIMANT[0]


def test_batch_complete_needs_in_progress_per_item(client: HandoffRailClient) -> None:
    working = [client.create_packet(packet(f"w{n}")).id for n in range(2)]
    for packet_id in working:
        start(client, packet_id)
    only_claimed = client.create_packet(packet("claimed only"))
    claim(client, only_claimed.id)

    result = client.batch_complete_packets([str(working[0]), str(only_claimed.id), str(working[1])])
    assert [p.id for p in result.completed] == working
    assert all(p.status == "completed" for p in result.completed)
    assert [error.packet_id for error in result.errors] == [str(only_claimed.id)]
    assert client.get_packet(only_claimed.id).status == "claimed"


def test_search_finds_words_and_applies_options(client: HandoffRailClient) -> None:
    urgent = client.create_packet(packet("Refund request for order 42", priority="critical"))
    normal = client.create_packet(packet("Refund request for order 43"))
    client.create_packet(packet("Password reset"))
    claim(client, normal.id)

    found = client.search_packets("refund")
    assert {p.id for p in found.packets} == {urgent.id, normal.id}
    assert found.total == 2
    by_status = client.search_packets("refund", SearchOptions(status="claimed"))
    assert [p.id for p in by_status.packets] == [normal.id]
    by_priority = client.search_packets("refund", SearchOptions(priority="critical"))
    assert [p.id for p in by_priority.packets] == [urgent.id]
    limited = client.search_packets("refund", SearchOptions(limit=1, offset=0))
    assert len(limited.packets) == 1
    assert limited.limit == 1


def test_search_with_punctuation_does_not_error_and_short_query_is_422(
    client: HandoffRailClient,
) -> None:
    target = client.create_packet(packet("refund request from a VIP"))
    for query in ("refund-request!", '"refund" (request)*', "refund:request^", "VIP? refund."):
        result = client.search_packets(query)
        assert [p.id for p in result.packets] == [target.id], query
    for query in ("-- ; DROP TABLE packet", 'NOT OR AND "unbalanced', "*:^()", "!!"):
        assert client.search_packets(query).packets == [], query
    with pytest.raises(ServerError) as short:
        client.search_packets("a")
    assert short.value.status_code == 422
