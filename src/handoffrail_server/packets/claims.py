"""Exactly-once claims: a claim is a compare-and-set on the row version and claimable status.

Two agents claiming one packet at the same instant: the database lets exactly one UPDATE match;
the other re-reads, sees `claimed` and gets 409 with the holder. `claim_next` hands the oldest
highest-priority packet to exactly one caller (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from handoffrail_server.db.models import Packet
from handoffrail_server.db.rows import transient
from handoffrail_server.errors import DomainError
from handoffrail_server.limits import service as quotas
from handoffrail_server.observability import metrics
from handoffrail_server.packets import changes, policy, queue, recent
from handoffrail_server.packets.errors import (
    ConcurrentUpdate,
    IllegalTransitionError,
    PacketAlreadyClaimed,
    PacketExpired,
)
from handoffrail_server.packets.lifecycle import (
    CLAIMABLE,
    ClaimRefusal,
    IllegalTransition,
    PacketStatus,
    claim_refusal,
)
from handoffrail_server.packets.schemas import BatchItemError, ClaimNext, PacketClaim
from handoffrail_server.packets.service import MAX_CAS_ATTEMPTS, PacketService

_CLAIMABLE_VALUES = [status.value for status in CLAIMABLE]


def _claimant(body: PacketClaim) -> dict[str, Any]:
    return {"id": body.agent_id, "name": body.agent_name, "framework": body.framework}


def _holder_text(holder: Any) -> str:
    """`agent 'id' (name)` for the 409 detail, which the SDK shows as the error message."""
    if not isinstance(holder, dict):
        return "another agent"
    return f"agent '{holder.get('id')}' ({holder.get('name')})"


def _refusal(packet: Packet, now: datetime) -> ClaimRefusal | None:
    refusal = claim_refusal(PacketStatus(packet.status))
    if refusal is None and packet.expires_at is not None and packet.expires_at <= now:
        refusal = ClaimRefusal.EXPIRED
    return refusal


async def _try_claim(
    service: PacketService,
    packet: Packet,
    body: PacketClaim,
    *,
    last: bool = False,
    recent_row: bool = False,
) -> Packet | None:
    """One compare-and-set attempt; None when someone else changed the row first.

    `recent_row`: `packet` is this process's cached row (`packets.recent`), which the caller
    has checked is claimable; the compare-and-set then also requires its status and
    `updated_at`, and that it has not expired."""
    now = service.clock.now()
    refusal = _refusal(packet, now)
    if refusal is ClaimRefusal.ALREADY_CLAIMED:
        holder = packet.packet_metadata.get("target_agent")
        metrics.CLAIM_CONFLICTS.inc()
        raise PacketAlreadyClaimed(
            f"Packet {packet.id} is already claimed by {_holder_text(holder)}", claimed_by=holder
        )
    if refusal is ClaimRefusal.EXPIRED:
        raise PacketExpired(f"Packet {packet.id} has expired")
    if refusal is ClaimRefusal.BAD_STATUS:
        message = IllegalTransition(PacketStatus(packet.status), PacketStatus.CLAIMED).message
        raise IllegalTransitionError(message, field="status")
    if service.limits is not None:
        # Before the compare-and-set, so that the claim and its history are one statement; a
        # claim that is then lost or refused rolls the registration back with the request.
        await quotas.register_agents(
            service.session,
            service.clock,
            service.limits,
            [(body.agent_id, body.agent_name, body.framework)],
        )
    metadata = dict(packet.packet_metadata)
    metadata["target_agent"] = _claimant(body)
    metadata["claimed_at"] = now.isoformat()
    return await service.change_and_record(
        packet,
        {
            "status": PacketStatus.CLAIMED.value,
            "packet_metadata": metadata,
            "target_agent_id": body.agent_id,
            "claimed_by_agent_id": body.agent_id,
            "claimed_at": now,
            "updated_at": now,
        },
        "claimed",
        f"agent:{body.agent_id}",
        from_status=packet.status,
        details={"agent_name": body.agent_name},
        allowed_statuses=_CLAIMABLE_VALUES,
        recent_row=recent_row,
        live_at=now if recent_row else None,
        last=last,
    )


async def claim(
    service: PacketService, packet_id: uuid.UUID, body: PacketClaim, *, last: bool = False
) -> Packet:
    """Claim one packet: 409 if held, 410 if expired, 400 from a non-claimable status.

    `last=True`: the unit of work writes nothing else (a single claim request). A packet this
    process changed moments ago is claimed from its cached row, without a read, when that row
    is claimable (`packets.recent`; a refusal is always decided on a fresh read)."""
    cached = recent.take(service.session, service.tenant_id, packet_id)
    if cached is not None and _refusal(cached, service.clock.now()) is None:
        updated = await _try_claim(service, cached, body, last=last, recent_row=True)
        if updated is not None:
            return updated
    for _attempt in range(MAX_CAS_ATTEMPTS):
        packet = await service.load(packet_id)
        updated = await _try_claim(service, packet, body, last=last)
        if updated is not None:
            return updated
    raise ConcurrentUpdate(f"Packet {packet_id} is being changed concurrently; retry")


async def claim_many(
    service: PacketService, packet_ids: list[uuid.UUID], body: PacketClaim
) -> tuple[list[Packet], list[BatchItemError]]:
    """Claim each packet; failures are reported per id and do not undo the others."""
    claimed: list[Packet] = []
    errors: list[BatchItemError] = []
    for packet_id in packet_ids:
        try:
            async with service.session.begin_nested():
                claimed.append(await claim(service, packet_id, body))
        except DomainError as exc:
            errors.append(BatchItemError(packet_id=str(packet_id), error=exc.detail))
    return claimed, errors


def _priorities(body: ClaimNext) -> list[str] | None:
    if body.priority is not None:
        return [body.priority.value]
    if body.min_priority is not None:
        floor = policy.PRIORITY_RANK[body.min_priority.value]
        return [name for name, rank in policy.PRIORITY_RANK.items() if rank >= floor]
    return None


def _picked() -> Packet:
    """What `changes.build` needs of a packet, for a claim-next whose packet its statement
    picks (the statement fills in the id and metadata)."""
    return transient(
        Packet,
        id=uuid.UUID(int=0),
        status=PacketStatus.CLAIMED.value,
        packet_metadata={},
        hitl=None,
    )


async def _claim_first(service: PacketService, body: ClaimNext, *, last: bool) -> Packet | None:
    """PostgreSQL: claim-next as one statement (`queue.claim_first`): the rules of
    `_try_claim` for a `created` candidate that is not expired, which the candidates' filter
    guarantees; the history, stream and webhook rows are `changes.build`'s, with the picked
    packet's id and metadata filled in by the statement."""
    now = service.clock.now()
    change = changes.build(
        service.clock,
        service.origin,
        _picked(),
        "claimed",
        f"agent:{body.agent_id}",
        from_status=PacketStatus.CREATED.value,
        details={"agent_name": body.agent_name},
        last=last,
    )
    claimed = await queue.claim_first(
        service.session,
        service.tenant_id,
        queue.Wanted(body.target_agent, body.tags, _priorities(body), now),
        agent_id=body.agent_id,
        metadata={"target_agent": _claimant(body), "claimed_at": now.isoformat()},
        change=change,
    )
    if claimed is not None:
        await service.settle(change, False)
    return claimed


async def claim_next(
    service: PacketService, body: ClaimNext, *, last: bool = False
) -> Packet | None:
    """Claim the oldest highest-priority `created` packet matching the filters, or None.

    `last=True`: the unit of work writes nothing else (a single claim-next request); on
    PostgreSQL, with the claimant already registered, the claim is then one statement that
    commits on its own."""
    dialect = service.session.get_bind().dialect.name
    if dialect == "postgresql" and (
        service.limits is None
        or quotas.agents_remembered(service.session, service.limits, [body.agent_id])
    ):
        return await _claim_first(service, body, last=last)
    batch = 1 if dialect == "postgresql" else 16
    for _attempt in range(MAX_CAS_ATTEMPTS):
        candidates = await queue.claim_candidates(
            service.session,
            service.tenant_id,
            [PacketStatus.CREATED.value],
            queue.Wanted(
                body.target_agent, body.tags, _priorities(body), service.clock.now(), batch
            ),
        )
        if not candidates:
            return None
        for packet in candidates:
            try:
                updated = await _try_claim(service, packet, body)
            except (PacketAlreadyClaimed, PacketExpired, IllegalTransitionError):
                continue  # this candidate changed meanwhile: the next one (a quota error is not)
            if updated is not None:
                return updated
    return None
