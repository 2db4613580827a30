"""What one packet state change writes, built before it is written (no I/O): its history event,
its stream event and its webhook event (`repository.Change`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from handoffrail_server.clock import Clock
from handoffrail_server.db.models import Packet, PacketEvent
from handoffrail_server.db.rows import transient
from handoffrail_server.packets.repository import Change
from handoffrail_server.realtime import service as streams
from handoffrail_server.webhooks import service as webhooks


@dataclass(frozen=True, slots=True)
class Origin:
    """Whose changes these are: the tenant, the calling key and the request."""

    tenant_id: str
    key_id: str | None = None
    request_id: str | None = None


def build(
    clock: Clock,
    origin: Origin,
    packet: Packet,
    event_type: str,
    actor: str,
    *,
    from_status: str | None,
    details: dict[str, Any] | None,
    created_tags: Sequence[str] | None = None,
    last: bool = False,
) -> Change:
    """The change recording `event_type` for `packet` (as it is after the change); with
    `created_tags`, `packet` is new and is inserted with its tags."""
    body = dict(details or {})
    if origin.key_id:
        body.setdefault("api_key_id", origin.key_id)
    event = transient(
        PacketEvent,
        id=uuid.uuid4(),
        tenant_id=origin.tenant_id,
        packet_id=packet.id,
        event_type=event_type,
        actor=actor[:512],
        from_status=from_status,
        to_status=packet.status,
        request_id=origin.request_id,
        details=body or None,
        created_at=clock.now(),
    )
    stream_event = streams.build_event(
        clock,
        tenant_id=origin.tenant_id,
        history_event=event_type,
        packet_id=packet.id,
        status=packet.status,
        metadata=packet.packet_metadata,
        details=details,
        hitl=packet.hitl,
    )
    webhook = webhooks.packet_webhook(
        clock,
        history_event=event_type,
        packet_id=packet.id,
        status=packet.status,
        metadata=packet.packet_metadata,
        details=details,
    )
    return Change(
        event=event,
        stream_event=stream_event,
        created=packet if created_tags is not None else None,
        tags=created_tags or (),
        webhook=webhook,
        last=last,
    )
