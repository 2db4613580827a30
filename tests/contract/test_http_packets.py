"""Packet behaviours over HTTP (CONTRACT.md §4-§5): merges, claims, HITL, chains, batches,
pagination, search and claim-next, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.conftest import Api, packet_body
from tests.contract.helpers import (
    HITL,
    P,
    assert_problem,
    claim,
    create_packet,
    get_packet,
    history,
    patch,
)


def _decision(ident: str, text: str) -> dict[str, Any]:
    return {"id": ident, "decision": text, "rationale": f"because {text}"}


def _events(events: list[dict[str, Any]]) -> list[str]:
    return [event["event_type"] for event in events]


async def _ids(api: Api, path: str, **params: Any) -> list[str]:
    response = await api.client.get(f"{P}{path}", params=params, headers=api.headers())
    assert response.status_code == 200, response.text
    return [packet["id"] for packet in response.json()["packets"]]


# -- PATCH merge rules ------------------------------------------------------------------------


async def test_patch_merges_decisions_by_id_in_place_and_appends_new(api: Api) -> None:
    body = packet_body()
    body["decisions"] = [_decision("d1", "one"), _decision("d2", "two"), _decision("d3", "three")]
    packet = await create_packet(api, body=body)
    response = await patch(
        api, packet["id"], {"decisions": [_decision("d4", "four"), _decision("d2", "TWO")]}
    )
    assert response.status_code == 200, response.text
    decisions = response.json()["decisions"]
    assert all(d["alternatives"] == [] for d in decisions)
    assert [(d["id"], d["decision"]) for d in decisions] == [
        ("d1", "one"),
        ("d2", "TWO"),
        ("d3", "three"),
        ("d4", "four"),
    ]
    assert (await get_packet(api, packet["id"]))["decisions"] == decisions


async def test_patch_replaces_only_the_action_buckets_it_carries(api: Api) -> None:
    body = packet_body()
    body["actions"] = {
        "pending": [{"id": "a1", "description": "call", "assignee": "bob"}],
        "completed": [{"id": "c1", "description": "read", "result": "done"}],
        "failed": [{"id": "f1", "description": "pay", "error": "declined"}],
    }
    packet = await create_packet(api, body=body)
    new_pending = [{"id": "a2", "description": "email", "assignee": "eve"}]
    response = await patch(api, packet["id"], {"actions": {"pending": new_pending}})
    assert response.status_code == 200, response.text
    actions = response.json()["actions"]
    assert [a["id"] for a in actions["pending"]] == ["a2"]
    assert [a["id"] for a in actions["completed"]] == ["c1"]
    assert [a["id"] for a in actions["failed"]] == ["f1"]
    emptied = await patch(api, packet["id"], {"actions": {"failed": []}})
    assert emptied.json()["actions"]["failed"] == []
    assert [a["id"] for a in emptied.json()["actions"]["pending"]] == ["a2"]


async def test_patch_replaces_context_whole(api: Api) -> None:
    body = packet_body("old summary")
    body["context"] = {
        "summary": "old summary",
        "conversation_state": [{"role": "user", "content": "hello"}],
        "custom": {"keep": False},
    }
    packet = await create_packet(api, body=body)
    response = await patch(api, packet["id"], {"context": {"summary": "new summary"}})
    assert response.status_code == 200
    context = response.json()["context"]
    assert context == {
        "summary": "new summary",
        "conversation_state": [],
        "artifacts": [],
        "custom": {},
    }
    found = await _ids(api, "/packets/search", q="new summary")
    assert found == [packet["id"]]
    assert await _ids(api, "/packets/search", q="hello") == []


async def test_patch_to_the_same_status_is_a_no_op_without_event(api: Api) -> None:
    packet = await create_packet(api)
    response = await patch(api, packet["id"], {"status": "created"})
    assert response.status_code == 200
    assert response.json()["status"] == "created"
    assert response.json()["updated_at"] == packet["updated_at"]
    assert _events(await history(api, packet["id"])) == ["created"]


async def test_patch_without_status_records_an_updated_event(api: Api) -> None:
    packet = await create_packet(api)
    await patch(api, packet["id"], {"decisions": [_decision("d1", "x")]})
    events = await history(api, packet["id"])
    assert _events(events) == ["created", "updated"]
    assert events[1]["details"]["fields"] == ["decisions"]


async def test_full_lifecycle_sets_completed_at_and_records_every_step(api: Api) -> None:
    packet = await create_packet(api)
    assert packet["metadata"]["completed_at"] is None
    assert (await claim(api, packet["id"])).status_code == 200
    assert (await patch(api, packet["id"], {"status": "in_progress"})).status_code == 200
    done = await patch(api, packet["id"], {"status": "completed"})
    assert done.status_code == 200
    completed_at = datetime.fromisoformat(done.json()["metadata"]["completed_at"])
    assert completed_at.tzinfo is not None
    assert completed_at >= datetime.fromisoformat(packet["metadata"]["created_at"])
    assert _events(await history(api, packet["id"])) == [
        "created",
        "claimed",
        "in_progress",
        "completed",
    ]
    again = await patch(api, packet["id"], {"status": "in_progress"})
    assert_problem(again, 400, "packet.illegal_transition")


# -- claim ------------------------------------------------------------------------------------


async def test_claim_replaces_target_agent_and_sets_claimed_at(api: Api) -> None:
    packet = await create_packet(api, target="billing-01")
    response = await claim(api, packet["id"], agent_id="refunds-9")
    assert response.status_code == 200
    claimed = response.json()
    assert claimed["status"] == "claimed"
    assert claimed["metadata"]["target_agent"] == {
        "id": "refunds-9",
        "name": "Refunds-9",
        "framework": "pytest",
    }
    assert claimed["metadata"]["claimed_at"] is not None
    assert claimed["metadata"]["source_agent"] == packet["metadata"]["source_agent"]
    events = await history(api, packet["id"])
    assert _events(events) == ["created", "claimed"]
    assert events[1]["actor"] == "agent:refunds-9"
    by_target = await _ids(api, "/packets", target_agent="refunds-9")
    assert by_target == [packet["id"]]


# -- HITL -------------------------------------------------------------------------------------


async def test_hitl_packets_await_a_human_oldest_first(api: Api) -> None:
    first = await create_packet(api, summary="first", hitl=HITL)
    await create_packet(api, summary="plain")
    optional = await create_packet(api, summary="optional", hitl={**HITL, "required": False})
    second = await create_packet(api, summary="second", hitl=HITL)
    assert first["status"] == second["status"] == "awaiting_human"
    assert optional["status"] == "created"
    response = await api.client.get(f"{P}/packets/awaiting", headers=api.headers())
    page = response.json()
    assert [packet["id"] for packet in page["packets"]] == [first["id"], second["id"]]
    assert page["total"] == 2
    assert page["next_cursor"] is None
    assert await _ids(api, "/packets/awaiting", limit=1, offset=1) == [second["id"]]


async def test_respond_fills_the_checkpoint_and_returns_to_claimed(api: Api) -> None:
    packet = await create_packet(api, hitl=HITL)
    response = await api.client.post(
        f"{P}/packets/{packet['id']}/respond",
        json={"response": "approved", "responded_by": "alice", "notes": "fine"},
        headers=api.headers(),
    )
    assert response.status_code == 200, response.text
    answered = response.json()
    assert answered["status"] == "claimed"
    assert answered["hitl"]["response"] == "approved"
    assert answered["hitl"]["responded_by"] == "alice"
    assert answered["hitl"]["notes"] == "fine"
    assert answered["hitl"]["responded_at"] is not None
    assert answered["hitl"]["reason"] == HITL["reason"]
    assert answered["metadata"]["claimed_at"] is not None
    events = await history(api, packet["id"])
    assert _events(events) == ["created", "hitl_responded"]
    assert events[-1]["actor"] == "human:alice"
    assert await _ids(api, "/packets/awaiting") == []
    again = await api.client.post(
        f"{P}/packets/{packet['id']}/respond",
        json={"response": "twice", "responded_by": "bob"},
        headers=api.headers(),
    )
    assert_problem(again, 409, "packet.not_awaiting_human")


# -- chain ------------------------------------------------------------------------------------


async def test_chain_inherits_the_parents_conversation_and_marks_the_parent(api: Api) -> None:
    body = packet_body("parent")
    body["context"] = {
        "summary": "parent",
        "conversation_state": [
            {"role": "user", "content": "p1"},
            {"role": "agent", "content": "p2"},
        ],
    }
    parent = await create_packet(api, body=body)
    child_body = packet_body("child", source="billing-01", target="shipping-01")
    child_body["context"] = {
        "summary": "child",
        "conversation_state": [{"role": "agent", "content": "c1"}],
    }
    response = await api.client.post(
        f"{P}/packets/{parent['id']}/chain", json=child_body, headers=api.headers()
    )
    assert response.status_code == 201, response.text
    child = response.json()
    assert child["parent_packet_id"] == parent["id"]
    assert child["status"] == "created"
    assert [turn["content"] for turn in child["context"]["conversation_state"]] == [
        "p1",
        "p2",
        "c1",
    ]
    parent_events = await history(api, parent["id"])
    assert _events(parent_events) == ["created", "chained"]
    assert parent_events[-1]["details"]["child_packet_id"] == child["id"]
    assert (await get_packet(api, parent["id"]))["context"] == parent["context"]


async def test_chain_from_a_finished_parent_and_with_hitl(api: Api) -> None:
    parent = await create_packet(api)
    assert (await patch(api, parent["id"], {"status": "failed"})).status_code == 200
    child = await api.client.post(
        f"{P}/packets/{parent['id']}/chain",
        json={**packet_body("child"), "hitl": HITL},
        headers=api.headers(),
    )
    assert child.status_code == 201
    assert child.json()["status"] == "awaiting_human"


# -- batch ------------------------------------------------------------------------------------


async def test_batch_of_51_is_400_and_creates_nothing(api: Api) -> None:
    bodies = [packet_body(f"item {index}") for index in range(51)]
    response = await api.client.post(
        f"{P}/packets/batch", json={"packets": bodies}, headers=api.headers()
    )
    assert_problem(response, 400, "packet.batch_too_large")
    assert await _ids(api, "/packets") == []


async def test_batch_reports_invalid_items_by_index_and_creates_the_rest(api: Api) -> None:
    bodies: list[Any] = [
        packet_body("good 0"),
        {"metadata": {}, "context": {}},
        packet_body("good 2", hitl=HITL),
        {"context": {"summary": "no metadata"}},
    ]
    response = await api.client.post(
        f"{P}/packets/batch", json={"packets": bodies}, headers=api.headers()
    )
    assert response.status_code == 201, response.text
    result = response.json()
    assert [packet["context"]["summary"] for packet in result["created"]] == ["good 0", "good 2"]
    assert [packet["status"] for packet in result["created"]] == ["created", "awaiting_human"]
    assert [error["index"] for error in result["errors"]] == [1, 3]
    assert all(isinstance(error["error"], str) and error["error"] for error in result["errors"])
    assert len(await _ids(api, "/packets")) == 2


async def test_batch_of_exactly_50_is_accepted(api: Api) -> None:
    bodies = [packet_body(f"item {index}") for index in range(50)]
    response = await api.client.post(
        f"{P}/packets/batch", json={"packets": bodies}, headers=api.headers()
    )
    assert response.status_code == 201
    assert len(response.json()["created"]) == 50


# -- listing ----------------------------------------------------------------------------------


async def test_cursor_walk_yields_every_packet_once_newest_first(api: Api) -> None:
    made = [(await create_packet(api, summary=f"p{index}"))["id"] for index in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await api.client.get(f"{P}/packets", params=params, headers=api.headers())
        assert response.status_code == 200
        page = response.json()
        assert page["total"] == 7
        assert page["limit"] == 3
        seen.extend(packet["id"] for packet in page["packets"])
        cursor = page["next_cursor"]
        pages += 1
        if cursor is None:
            break
        assert "=" not in cursor
    assert pages == 3
    assert seen == list(reversed(made))


async def test_offset_pages_and_the_cursor_ignores_offset(api: Api) -> None:
    made = [(await create_packet(api, summary=f"p{index}"))["id"] for index in range(5)]
    newest_first = list(reversed(made))
    assert await _ids(api, "/packets", limit=2, offset=2) == newest_first[2:4]
    first = await api.client.get(f"{P}/packets", params={"limit": 2}, headers=api.headers())
    cursor = first.json()["next_cursor"]
    response = await api.client.get(
        f"{P}/packets", params={"limit": 2, "offset": 3, "cursor": cursor}, headers=api.headers()
    )
    assert [p["id"] for p in response.json()["packets"]] == newest_first[2:4]
    assert response.json()["offset"] == 3
    last = await api.client.get(f"{P}/packets", params={"limit": 5}, headers=api.headers())
    assert last.json()["next_cursor"] is None


async def test_tags_filter_requires_every_tag(api: Api) -> None:
    both = await create_packet(api, tags=["vip", "refund"])
    vip = await create_packet(api, tags=["vip"])
    await create_packet(api, tags=["refund", "other"])
    assert await _ids(api, "/packets", tags="vip,refund") == [both["id"]]
    assert await _ids(api, "/packets", tags="refund , vip") == [both["id"]]
    assert set(await _ids(api, "/packets", tags="vip")) == {both["id"], vip["id"]}
    assert await _ids(api, "/packets", tags="vip,refund,missing") == []


async def test_filters_by_status_priority_and_agents(api: Api) -> None:
    low = await create_packet(api, priority="low", source="a-src", target="a-dst")
    high = await create_packet(api, priority="high", source="b-src", target="b-dst")
    assert (await claim(api, high["id"])).status_code == 200
    assert await _ids(api, "/packets", priority="low") == [low["id"]]
    assert await _ids(api, "/packets", status="claimed") == [high["id"]]
    assert set(await _ids(api, "/packets", status="created,claimed")) == {low["id"], high["id"]}
    assert await _ids(api, "/packets", source_agent="b-src") == [high["id"]]
    assert await _ids(api, "/packets", target_agent="a-dst") == [low["id"]]
    total = await api.client.get(
        f"{P}/packets", params={"status": "claimed"}, headers=api.headers()
    )
    assert total.json()["total"] == 1


async def test_created_after_and_before_are_inclusive(api: Api) -> None:
    first = await create_packet(api, summary="first")
    middle = await create_packet(api, summary="middle")
    last = await create_packet(api, summary="last")
    at = middle["created_at"]
    assert await _ids(api, "/packets", created_after=at, created_before=at) == [middle["id"]]
    assert await _ids(api, "/packets", created_after=at) == [last["id"], middle["id"]]
    assert await _ids(api, "/packets", created_before=at) == [middle["id"], first["id"]]
    assert await _ids(api, "/packets", created_after="2999-01-01T00:00:00Z") == []
    naive = datetime.fromisoformat(first["created_at"]).replace(tzinfo=None).isoformat()
    assert await _ids(api, "/packets", created_before=naive) == [first["id"]]


# -- search -----------------------------------------------------------------------------------


async def test_search_ranks_better_matches_first_and_filters_by_status(api: Api) -> None:
    weak = await create_packet(
        api,
        summary="a long note about shipping, invoices, addresses, weather, and once a "
        "refund among many unrelated words for padding the document length here",
    )
    strong = await create_packet(api, summary="refund refund refund request")
    await create_packet(api, summary="nothing relevant")
    response = await api.client.get(
        f"{P}/packets/search", params={"q": "refund"}, headers=api.headers()
    )
    assert response.status_code == 200
    assert [p["id"] for p in response.json()["packets"]] == [strong["id"], weak["id"]]
    assert response.json()["total"] == 2
    assert (await claim(api, weak["id"])).status_code == 200
    claimed_only = await _ids(api, "/packets/search", q="refund", status="claimed")
    assert claimed_only == [weak["id"]]
    assert await _ids(api, "/packets/search", q="refund", priority="high") == []


async def test_search_matches_conversation_decisions_tags_and_agents(api: Api) -> None:
    body = packet_body("summary", source="zeta-agent", tags=["platinum"])
    body["context"] = {
        "summary": "summary",
        "conversation_state": [{"role": "user", "content": "my parcel vanished"}],
    }
    body["decisions"] = [_decision("d1", "escalate to courier")]
    packet = await create_packet(api, body=body)
    for query in ("parcel", "courier", "platinum", "zeta-agent", "PARCEL vanished"):
        assert await _ids(api, "/packets/search", q=query) == [packet["id"]], query
    assert await _ids(api, "/packets/search", q="parcel missingword") == []


# -- claim-next -------------------------------------------------------------------------------


async def _claim_next(api: Api, **filters: Any) -> Any:
    response = await api.client.post(
        f"{P}/packets/claim-next",
        json={"agent_id": "worker", "agent_name": "Worker", **filters},
        headers=api.headers(),
    )
    if response.status_code == 204:
        assert response.content == b""
        return None
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "claimed"
    return response.json()["id"]


async def test_claim_next_takes_highest_priority_then_oldest(api: Api) -> None:
    low = await create_packet(api, priority="low")
    crit_old = await create_packet(api, priority="critical")
    normal = await create_packet(api, priority="normal")
    crit_new = await create_packet(api, priority="critical")
    high = await create_packet(api, priority="high")
    await create_packet(api, priority="critical", hitl=HITL)  # awaiting a human: not taken
    order = [await _claim_next(api) for _ in range(6)]
    assert order == [crit_old["id"], crit_new["id"], high["id"], normal["id"], low["id"], None]


async def test_claim_next_filters_by_target_tags_and_priority(api: Api) -> None:
    other = await create_packet(api, target="other-agent", tags=["a", "b"], priority="high")
    mine_a = await create_packet(api, target="me", tags=["a"], priority="normal")
    mine_ab = await create_packet(api, target="me", tags=["a", "b"], priority="low")
    assert await _claim_next(api, target_agent="nobody") is None
    assert await _claim_next(api, target_agent="me", tags=["a", "b"]) == mine_ab["id"]
    assert await _claim_next(api, priority="critical") is None
    assert await _claim_next(api, target_agent="me", priority="low") is None
    assert await _claim_next(api, target_agent="me") == mine_a["id"]
    assert await _claim_next(api, tags=["b"]) == other["id"]
    assert await _claim_next(api) is None
    claimed = await get_packet(api, mine_a["id"])
    assert claimed["metadata"]["target_agent"]["id"] == "worker"


async def test_claim_next_min_priority_takes_that_priority_and_above_only(api: Api) -> None:
    await create_packet(api, priority="low")
    normal = await create_packet(api, priority="normal")
    high = await create_packet(api, priority="high")
    critical = await create_packet(api, priority="critical")
    taken = [await _claim_next(api, min_priority="high") for _ in range(3)]
    assert taken == [critical["id"], high["id"], None]
    assert await _claim_next(api, min_priority="normal") == normal["id"]
    assert await _claim_next(api, min_priority="normal") is None


async def test_claim_next_skips_deleted_and_claimed_packets(api: Api) -> None:
    gone = await create_packet(api, priority="critical")
    taken = await create_packet(api, priority="critical")
    free = await create_packet(api, priority="low")
    assert (await api.client.delete(f"{P}/packets/{gone['id']}", headers=api.headers())).is_success
    assert (await claim(api, taken["id"])).status_code == 200
    assert await _claim_next(api) == free["id"]
    assert await _claim_next(api) is None


async def test_soft_delete_expires_and_keeps_the_packet_readable(api: Api) -> None:
    packet = await create_packet(api)
    response = await api.client.delete(f"{P}/packets/{packet['id']}", headers=api.headers())
    assert response.status_code == 204
    expired = await get_packet(api, packet["id"])
    assert expired["status"] == "expired"
    events = await history(api, packet["id"])
    assert _events(events) == ["created", "expired"]
    assert events[-1]["actor"] == "system:soft_delete"
    audit = await api.client.get(
        f"{P}/audit", params={"packet_id": packet["id"]}, headers=api.headers()
    )
    assert [entry["action"] for entry in audit.json()["entries"]] == ["expired", "created"]
    assert all(entry["resource"] == "packet" for entry in audit.json()["entries"])
