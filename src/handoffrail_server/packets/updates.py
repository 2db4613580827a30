"""PATCH: a status transition plus the merge rules of CONTRACT.md §5, as a compare-and-set.

The change is planned from the packet as read (`plan`: pure), then written only if the row is
still that one. A packet this process changed moments ago is planned from its cached row
(`packets.recent`): no read, and the compare-and-set also checks the row's `updated_at` and
status; a cached row the rules would refuse, or one that has changed meanwhile, falls back to
a fresh read, so errors are always decided on what the database holds.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from handoffrail_server.db.models import Packet
from handoffrail_server.errors import DomainError
from handoffrail_server.packets import policy, recent
from handoffrail_server.packets.errors import ConcurrentUpdate, IllegalTransitionError
from handoffrail_server.packets.lifecycle import IllegalTransition, PacketStatus, check_transition
from handoffrail_server.packets.schemas import PacketUpdate
from handoffrail_server.packets.service import MAX_CAS_ATTEMPTS, PacketService


@dataclass(frozen=True, slots=True)
class Plan:
    """What a PATCH writes to one packet and how its history records it."""

    values: dict[str, Any]
    event_type: str
    from_status: str | None
    details: dict[str, Any] | None


def requested(body: PacketUpdate) -> dict[str, Any]:
    """Top-level fields the caller sent, each in full (defaults filled, as on create); for
    actions only the buckets it sent, since each bucket is replaced on its own."""
    full = body.model_dump(mode="json")
    wanted = {name: full[name] for name in body.model_fields_set if full[name] is not None}
    if body.actions is not None:
        wanted["actions"] = {
            bucket: full["actions"][bucket] for bucket in body.actions.model_fields_set
        }
    return wanted


def plan(service: PacketService, packet: Packet, wanted: dict[str, Any]) -> Plan | None:
    """The change `wanted` makes to `packet`; None when it changes nothing. Raises
    `IllegalTransitionError` for a status the lifecycle table does not allow."""
    now = service.clock.now()
    current = PacketStatus(packet.status)
    values: dict[str, Any] = {}
    document: dict[str, Any] = {
        "metadata": dict(packet.packet_metadata),
        "context": packet.context,
        "decisions": packet.decisions,
        "actions": packet.actions,
    }
    target = PacketStatus(wanted["status"]) if "status" in wanted else None
    if target is not None and target is not current:
        try:
            check_transition(current, target)
        except IllegalTransition as exc:
            raise IllegalTransitionError(exc.message, field="status") from None
        values["status"] = target.value
        if target is PacketStatus.COMPLETED:
            document["metadata"]["completed_at"] = now.isoformat()
            values["completed_at"] = now
        if target is PacketStatus.CLAIMED:
            document["metadata"]["claimed_at"] = now.isoformat()
            values["claimed_at"] = now
        values["packet_metadata"] = document["metadata"]
    if "context" in wanted:
        values["context"] = document["context"] = wanted["context"]
    if "decisions" in wanted:
        merged = policy.merge_decisions(packet.decisions, wanted["decisions"])
        values["decisions"] = document["decisions"] = merged
    if "actions" in wanted:
        merged_actions = policy.merge_actions(packet.actions, wanted["actions"])
        values["actions"] = document["actions"] = merged_actions
    if "dependencies" in wanted:
        values["dependencies"] = wanted["dependencies"]
    if "hitl" in wanted:
        values["hitl"] = wanted["hitl"]
    if "status" in values:
        # HITL timeout_seconds runs from entering awaiting_human (CONTRACT.md §10.8).
        waiting = target is PacketStatus.AWAITING_HUMAN
        values["expires_at"] = policy.deadline(
            packet.created_at,
            now,
            service.ttl_seconds,
            values.get("hitl", packet.hitl) if waiting else None,
        )
    if not values:
        return None
    if {"context", "decisions", "actions"} & values.keys():
        values["search_text"] = policy.search_text(document)
    values["updated_at"] = now
    if "status" in values:
        return Plan(values, values["status"], current.value, None)
    fields = sorted(key for key in wanted if key != "status")
    return Plan(values, "updated", None, {"fields": fields})


async def _apply(
    service: PacketService,
    packet: Packet,
    change: Plan,
    actor: str | None,
    *,
    last: bool,
    recent_row: bool = False,
) -> Packet | None:
    return await service.change_and_record(
        packet,
        change.values,
        change.event_type,
        actor or service.agent_actor,
        from_status=change.from_status,
        details=change.details,
        recent_row=recent_row,
        last=last,
    )


async def _from_recent(
    service: PacketService, packet: Packet, wanted: dict[str, Any], actor: str | None, last: bool
) -> Packet | None:
    """The PATCH planned from this process's cached row; None when a fresh read must decide
    (the plan refuses or changes nothing, or the row has changed meanwhile)."""
    try:
        change = plan(service, packet, wanted)
    except IllegalTransitionError:
        return None
    if change is None:
        return None
    return await _apply(service, packet, change, actor, last=last, recent_row=True)


async def update(
    service: PacketService,
    packet_id: uuid.UUID,
    body: PacketUpdate,
    *,
    actor: str | None = None,
    last: bool = False,
) -> Packet:
    """PATCH one packet. `last=True`: the unit of work writes nothing else (a single PATCH
    request)."""
    wanted = requested(body)
    cached = recent.take(service.session, service.tenant_id, packet_id)
    if cached is not None:
        updated = await _from_recent(service, cached, wanted, actor, last)
        if updated is not None:
            return updated
    for _attempt in range(MAX_CAS_ATTEMPTS):
        packet = await service.load(packet_id)
        change = plan(service, packet, wanted)
        if change is None:
            return packet
        updated = await _apply(service, packet, change, actor, last=last)
        if updated is not None:
            return updated
    raise ConcurrentUpdate(f"Packet {packet_id} is being changed concurrently; retry")


async def complete_many(
    service: PacketService, packet_ids: Sequence[uuid.UUID]
) -> tuple[list[Packet], list[tuple[str, str]]]:
    """Complete each packet (each must be in progress); report failures per id."""
    done: list[Packet] = []
    errors: list[tuple[str, str]] = []
    body = PacketUpdate(status=PacketStatus.COMPLETED)
    for packet_id in packet_ids:
        try:
            async with service.session.begin_nested():
                done.append(await update(service, packet_id, body, actor="system:batch_complete"))
        except DomainError as exc:
            errors.append((str(packet_id), exc.detail))
    return done, errors
