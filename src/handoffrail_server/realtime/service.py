"""Stream use cases: append events with state changes, read them back filtered per subscriber."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.clock import Clock
from handoffrail_server.db.models import StreamEvent
from handoffrail_server.db.rows import transient
from handoffrail_server.realtime import repository

#: session.info key listing tenants whose readers must be woken after commit
NOTIFY_KEY = "handoffrail.stream_tenants"

_TYPE_BY_HISTORY = {
    "created": "packet.created",
    "claimed": "packet.claimed",
    "hitl_responded": "hitl.response_ready",
    "hitl_timed_out": "hitl.timed_out",
    "chained": "packet.chained",
    "updated": "packet.updated",
}


#: a resume id longer than this is not one of ours (ids are BIGINT; int() of a huge string fails)
MAX_LAST_ID_DIGITS = 20


def parse_last_event_id(value: str | None) -> int | None:
    """A resume id (`Last-Event-ID`), or None (start at now) for anything but up to 20 ASCII
    digits: `str.isdigit()` alone accepts `²` and other Unicode digits that int() refuses or
    reads differently. Capped at 2**62."""
    value = value.strip() if value else ""
    if not (value.isascii() and value.isdigit()) or len(value) > MAX_LAST_ID_DIGITS:
        return None
    return min(int(value), 2**62)


def stream_type(history_event: str) -> str:
    """The stream event type for a packet history event (`packet.<status>` for transitions)."""
    return _TYPE_BY_HISTORY.get(history_event, f"packet.{history_event}")


def build_event(
    clock: Clock,
    *,
    tenant_id: str,
    history_event: str,
    packet_id: uuid.UUID,
    status: str,
    metadata: dict[str, Any],
    details: dict[str, Any] | None,
    hitl: dict[str, Any] | None,
) -> StreamEvent:
    """The stream event of a packet history event (not yet written)."""
    event_type = stream_type(history_event)
    data: dict[str, Any] = {"status": status, "metadata": metadata}
    if details:
        data["details"] = {key: value for key, value in details.items() if key != "api_key_id"}
        if "parent_packet_id" in details:
            data["parent_packet_id"] = details["parent_packet_id"]
    if event_type == "hitl.response_ready" and hitl is not None:
        data["hitl_response"] = hitl.get("response")
    source = (metadata.get("source_agent") or {}).get("id")
    target = (metadata.get("target_agent") or {}).get("id")
    return transient(
        StreamEvent,
        tenant_id=tenant_id,
        event_type=event_type,
        packet_id=packet_id,
        status=status,
        source_agent_id=str(source) if source is not None else None,
        target_agent_id=str(target) if target is not None else None,
        data=data,
        created_at=clock.now(),
    )


def wake_after_commit(session: AsyncSession, tenant_id: str) -> None:
    """Mark the tenant: its stream readers are woken once the unit of work commits."""
    session.info.setdefault(NOTIFY_KEY, set()).add(tenant_id)


async def append(session: AsyncSession, event: StreamEvent) -> None:
    """Log a stream event in the caller's transaction and mark the tenant for a wake-up."""
    await repository.append(session, event)
    wake_after_commit(session, event.tenant_id)


@dataclass(slots=True)
class Subscription:
    """What one client wants: channels (`status:x`, `packet:id`, `agent:id`) or everything."""

    channels: set[str] = field(default_factory=set)

    def matches(self, event: StreamEvent) -> bool:
        """True when the event belongs to a subscribed channel (no channels: all events)."""
        if not self.channels:
            return True
        candidates = {f"packet:{event.packet_id}", f"status:{event.status}"}
        for agent in (event.source_agent_id, event.target_agent_id):
            if agent:
                candidates.add(f"agent:{agent}")
        return not candidates.isdisjoint(self.channels)


def envelope(event: StreamEvent) -> dict[str, Any]:
    """The wire envelope of both transports (CONTRACT.md §6)."""
    return {
        "type": event.event_type,
        "id": event.id,
        "packet_id": str(event.packet_id) if event.packet_id else None,
        "data": event.data,
        "timestamp": event.created_at.isoformat(),
    }


#: how soon a reader looks again when committed events are held back behind older transactions
HELD_BACK_RETRY_SECONDS = 0.02


async def read_batch(
    session: AsyncSession, tenant_id: str, after_id: int, limit: int = 200
) -> repository.EventBatch:
    """The tenant's deliverable events after `after_id` (tenant isolation is in the query)."""
    return await repository.since(session, tenant_id, after_id, limit)


async def read_since(
    session: AsyncSession, tenant_id: str, after_id: int, limit: int = 200
) -> list[StreamEvent]:
    """`read_batch` without the held-back flag."""
    return (await repository.since(session, tenant_id, after_id, limit)).events


async def newest_id(session: AsyncSession, tenant_id: str) -> int:
    """Where a new subscriber without Last-Event-ID starts."""
    return await repository.last_id(session, tenant_id)
