"""HITL deadlines: a 2-second `timeout_seconds` takes each fallback, with audit, event, webhook."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from handoffrail_server.clock import FrozenClock, SystemClock
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import StreamEvent
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.packets.deadlines import expire_due
from tests.conftest import Api, packet_body

P = "/api/v1"
#: a public literal address: creation accepts it, and nothing is delivered in these tests
RECEIVER = "http://93.184.216.34/hook"


async def _run_deadlines(url: str, seconds_later: float) -> int:
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        clock = FrozenClock(SystemClock().now() + timedelta(seconds=seconds_later))
        async with unit_of_work(create_sessionmaker(engine)) as session:
            return await expire_due(session, clock, ttl_seconds=86_400)
    finally:
        await engine.dispose()


async def _stream_types(url: str, packet_id: str) -> list[str]:
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as session:
            rows = await session.execute(select(StreamEvent).order_by(StreamEvent.id))
            return [row.event_type for row in rows.scalars() if str(row.packet_id) == packet_id]
    finally:
        await engine.dispose()


async def _hitl_packet(api: Api, hitl: dict[str, Any]) -> dict[str, Any]:
    body = packet_body(hitl={"reason": "needs sign-off", "timeout_seconds": 2, **hitl})
    response = await api.client.post(f"{P}/packets", json=body, headers=api.headers())
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "awaiting_human"
    return dict(response.json())


@pytest.mark.parametrize(
    ("fallback", "status", "target"),
    [
        ("fail", "failed", "billing-01"),
        ("expire", "expired", "billing-01"),
        ("escalate", "created", "boss"),
    ],
)
async def test_two_second_hitl_deadline_takes_its_fallback_with_audit_event_and_webhook(
    api: Api, fallback: str, status: str, target: str
) -> None:
    hook = await api.client.post(
        f"{P}/hooks",
        json={"url": RECEIVER, "events": ["hitl.timed_out"], "secret": "s" * 24},
        headers=api.headers(),
    )
    assert hook.status_code == 201, hook.text
    packet = await _hitl_packet(api, {"fallback": fallback, "escalate_to": "boss"})

    assert await _run_deadlines(api.url, seconds_later=1) == 0  # not yet due
    assert await _run_deadlines(api.url, seconds_later=3) == 1

    current = (await api.client.get(f"{P}/packets/{packet['id']}", headers=api.headers())).json()
    assert current["status"] == status
    assert current["metadata"]["target_agent"]["id"] == target
    assert current["hitl"]["timed_out_at"]
    history = await api.client.get(f"{P}/packets/{packet['id']}/history", headers=api.headers())
    timed_out = [e for e in history.json()["events"] if e["event_type"] == "hitl_timed_out"]
    assert len(timed_out) == 1
    assert timed_out[0]["actor"] == "system:hitl_timeout"
    assert timed_out[0]["details"]["fallback"] == fallback
    assert "deadline" in timed_out[0]["details"]["reason"]

    audit = await api.client.get(
        f"{P}/audit", params={"action": "hitl_timed_out"}, headers=api.headers()
    )
    assert [entry["packet_id"] for entry in audit.json()["entries"]] == [packet["id"]]
    assert "hitl.timed_out" in await _stream_types(api.url, packet["id"])
    deliveries = await api.client.get(
        f"{P}/hooks/{hook.json()['id']}/deliveries", headers=api.headers()
    )
    assert [d["event_type"] for d in deliveries.json()] == ["hitl.timed_out"]
    assert deliveries.json()[0]["packet_id"] == packet["id"]

    # Idempotent: a second run finds nothing left to do.
    assert await _run_deadlines(api.url, seconds_later=4) == 0


async def test_packet_without_its_own_fallback_follows_its_tenants(api: Api) -> None:
    tenant_id, key = await api.new_tenant_admin(tier="business")
    patched = await api.client.patch(
        f"{P}/tenants/{tenant_id}", json={"hitl_fallback": "fail"}, headers=api.headers()
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["hitl_fallback"] == "fail"
    body = packet_body(hitl={"reason": "check", "timeout_seconds": 2})
    created = await api.client.post(f"{P}/packets", json=body, headers=api.headers(key))
    assert created.status_code == 201, created.text
    assert await _run_deadlines(api.url, seconds_later=3) == 1
    current = await api.client.get(f"{P}/packets/{created.json()['id']}", headers=api.headers(key))
    assert current.json()["status"] == "failed"


async def test_answered_packet_is_not_timed_out(api: Api) -> None:
    packet = await _hitl_packet(api, {"fallback": "fail"})
    answer = {"response": "approved", "responded_by": "alice"}
    responded = await api.client.post(
        f"{P}/packets/{packet['id']}/respond", json=answer, headers=api.headers()
    )
    assert responded.status_code == 200
    assert await _run_deadlines(api.url, seconds_later=3) == 0
    current = await api.client.get(f"{P}/packets/{packet['id']}", headers=api.headers())
    assert current.json()["status"] == "claimed"
    assert current.json()["hitl"]["responded_by"] == "alice"


async def test_deadline_job_runs_do_not_double_apply_when_concurrent(api: Api) -> None:
    packets = [await _hitl_packet(api, {"fallback": "expire"}) for _ in range(5)]
    results = await asyncio.gather(*(_run_deadlines(api.url, 3) for _ in range(3)))
    assert sum(results) == len(packets)
    for packet in packets:
        history = await api.client.get(f"{P}/packets/{packet['id']}/history", headers=api.headers())
        kinds = [event["event_type"] for event in history.json()["events"]]
        assert kinds.count("hitl_timed_out") == 1
