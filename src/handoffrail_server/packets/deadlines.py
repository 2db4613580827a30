"""Deadlines: the TTL and HITL timeouts, applied by the `expire-packets` job.

A packet awaiting a human whose `hitl.timeout_seconds` ran out takes its fallback — the
packet's own `hitl.fallback`, else its tenant's `hitl_fallback`:
`fail` → failed, `expire` → expired, `escalate` → back to `created` (for `hitl.escalate_to`
if given). Each is recorded as a system action (`hitl_timed_out`), streamed as
`hitl.timed_out` and sent to webhooks. Other overdue packets expire.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.clock import Clock
from handoffrail_server.db.models import Packet, Tenant
from handoffrail_server.packets import policy, repository
from handoffrail_server.packets.lifecycle import ACTIVE, PacketStatus
from handoffrail_server.packets.service import PacketService

FALLBACKS = ("fail", "expire", "escalate")
_TARGET = {"fail": PacketStatus.FAILED, "expire": PacketStatus.EXPIRED}


def _hitl_timed_out(packet: Packet) -> bool:
    hitl = packet.hitl or {}
    return (
        packet.status == PacketStatus.AWAITING_HUMAN
        and isinstance(hitl.get("timeout_seconds"), int)
        and hitl.get("response") is None
    )


async def _tenant_fallback(session: AsyncSession, cache: dict[str, str], tenant_id: str) -> str:
    if tenant_id not in cache:
        tenant = await session.get(Tenant, tenant_id)
        cache[tenant_id] = tenant.hitl_fallback if tenant is not None else "expire"
    return cache[tenant_id]


def _escalation_values(
    packet: Packet, now: datetime, ttl_seconds: int, hitl: dict[str, Any]
) -> dict[str, Any]:
    metadata = dict(packet.packet_metadata)
    values: dict[str, Any] = {
        "status": PacketStatus.CREATED.value,
        "claimed_by_agent_id": None,
        "claimed_at": None,
        "expires_at": policy.deadline(packet.created_at, now, ttl_seconds, None),
    }
    escalate_to = hitl.get("escalate_to")
    if isinstance(escalate_to, str) and escalate_to:
        metadata["target_agent"] = {"id": escalate_to, "name": escalate_to, "framework": None}
        values["target_agent_id"] = escalate_to
    metadata["claimed_at"] = None
    values["packet_metadata"] = metadata
    return values


async def expire_due(
    session: AsyncSession, clock: Clock, *, limit: int = 500, ttl_seconds: int = 86_400
) -> int:
    """Apply every passed deadline (idempotent: compare-and-set per packet); returns the count."""
    now = clock.now()
    fallbacks: dict[str, str] = {}
    changed = 0
    for packet in await repository.due_for_expiry(session, now, limit):
        previous = packet.status
        if PacketStatus(previous) not in ACTIVE:
            continue
        service = PacketService(session, clock, packet.tenant_id, ttl_seconds=ttl_seconds)
        if not _hitl_timed_out(packet):
            updated = await repository.compare_and_set(
                session,
                packet,
                {"status": PacketStatus.EXPIRED.value, "updated_at": now},
                allowed_statuses=[status.value for status in ACTIVE],
            )
            if updated is not None:
                await service.record(updated, "expired", "system:expiry", from_status=previous)
                changed += 1
            continue
        hitl = dict(packet.hitl or {})
        fallback = hitl.get("fallback")
        if fallback not in FALLBACKS:
            fallback = await _tenant_fallback(session, fallbacks, packet.tenant_id)
        if (
            fallback == "escalate"
            and packet.created_at.timestamp() + ttl_seconds <= now.timestamp()
        ):
            fallback = "expire"  # nothing to escalate to once the TTL itself has passed
        hitl["timed_out_at"] = now.isoformat()
        values: dict[str, Any] = {"hitl": hitl, "updated_at": now}
        if fallback == "escalate":
            values.update(_escalation_values(packet, now, ttl_seconds, hitl))
        else:
            values["status"] = _TARGET[str(fallback)].value
        updated = await repository.compare_and_set(
            session, packet, values, allowed_statuses=[PacketStatus.AWAITING_HUMAN.value]
        )
        if updated is None:
            continue
        reason = f"HITL deadline of {hitl.get('timeout_seconds')} s passed without a response"
        await service.record(
            updated,
            "hitl_timed_out",
            "system:hitl_timeout",
            from_status=previous,
            details={"fallback": fallback, "reason": reason},
        )
        if fallback != "escalate":
            await service.record(
                updated, updated.status, "system:hitl_timeout", from_status=previous
            )
        changed += 1
    return changed
