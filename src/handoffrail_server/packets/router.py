"""HTTP routes of packets (CONTRACT.md §5 Packets). Thin: parse, call the service, shape."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response

from handoffrail_server.api.deps import (
    Caller,
    Session,
    app_state,
    as_utc,
    request_id,
    tenant_limits,
)
from handoffrail_server.api.lanes import LaneSpec
from handoffrail_server.packets import claims, policy, updates
from handoffrail_server.packets.errors import InvalidFilter
from handoffrail_server.packets.lifecycle import PacketStatus
from handoffrail_server.packets.repository import PacketFilter
from handoffrail_server.packets.schemas import (
    BatchClaim,
    BatchClaimed,
    BatchComplete,
    BatchCompleted,
    BatchCreate,
    BatchCreated,
    BatchItemError,
    ChainRequest,
    ClaimNext,
    History,
    HitlRespond,
    PacketClaim,
    PacketCreate,
    PacketPage,
    PacketRead,
    PacketUpdate,
    Priority,
)
from handoffrail_server.packets.service import PacketService, to_read

router = APIRouter(prefix="/packets", tags=["packets"])

Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]
AgentId = Annotated[str | None, Query(max_length=256)]


def _service(request: Request, session: Session, caller: Caller) -> PacketService:
    state = app_state(request)
    return PacketService(
        session,
        state.clock,
        caller.tenant_id,
        key_id=caller.key_id,
        request_id=request_id(request),
        ttl_seconds=state.settings.packet_ttl_seconds,
        max_batch=state.settings.max_batch_size,
        limits=tenant_limits(request),
    )


def _statuses(value: str | None) -> list[str]:
    statuses = policy.split_csv(value)
    valid = {status.value for status in PacketStatus}
    bad = [status for status in statuses if status not in valid]
    if bad:
        raise InvalidFilter(
            f"Unknown status {bad[0]!r}; expected one of {sorted(valid)}", field="status"
        )
    return statuses


@router.post("", status_code=201, response_model=PacketRead)
async def create_packet(
    body: PacketCreate, request: Request, session: Session, caller: Caller
) -> PacketRead:
    """Create a packet."""
    service = _service(request, session, caller)
    return to_read(await service.create(body, last=True))


@router.get("", response_model=PacketPage)
async def list_packets(
    request: Request,
    session: Session,
    caller: Caller,
    status: Annotated[str | None, Query(max_length=512)] = None,
    source_agent: AgentId = None,
    target_agent: AgentId = None,
    tags: Annotated[str | None, Query(max_length=2048)] = None,
    priority: Priority | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> PacketPage:
    """List packets newest first with filters, offset or cursor pagination."""
    filters = PacketFilter(
        statuses=_statuses(status),
        source_agent=source_agent,
        target_agent=target_agent,
        tags=policy.split_csv(tags)[:32],
        priority=priority.value if priority else None,
        created_after=as_utc(created_after),
        created_before=as_utc(created_before),
    )
    service = _service(request, session, caller)
    return await service.page(filters, limit=limit, offset=offset, cursor=cursor)


@router.get("/awaiting", response_model=PacketPage)
async def awaiting_packets(
    request: Request,
    session: Session,
    caller: Caller,
    limit: Limit = 50,
    offset: Offset = 0,
) -> PacketPage:
    """Packets awaiting a human, oldest first."""
    service = _service(request, session, caller)
    return await service.awaiting(limit=limit, offset=offset)


@router.get("/search", response_model=PacketPage)
async def search_packets(
    request: Request,
    session: Session,
    caller: Caller,
    q: Annotated[str, Query(min_length=2, max_length=512)],
    limit: Limit = 50,
    offset: Offset = 0,
    status: Annotated[str | None, Query(max_length=512)] = None,
    priority: Priority | None = None,
) -> PacketPage:
    """Full-text search over summaries, conversations, decisions, actions, tags and agents."""
    filters = PacketFilter(
        statuses=_statuses(status), priority=priority.value if priority else None
    )
    service = _service(request, session, caller)
    return await service.search(q, filters, limit=limit, offset=offset)


@router.post("/batch", status_code=201, response_model=BatchCreated)
async def batch_create(
    body: BatchCreate, request: Request, session: Session, caller: Caller
) -> BatchCreated:
    """Create up to 50 packets; invalid ones are reported by index."""
    service = _service(request, session, caller)
    return await service.create_many(body.packets)


@router.post("/batch/claim", response_model=BatchClaimed)
async def batch_claim(
    body: BatchClaim, request: Request, session: Session, caller: Caller
) -> BatchClaimed:
    """Claim several packets for one agent; failures are reported per id."""
    service = _service(request, session, caller)
    claimant = PacketClaim(
        agent_id=body.agent_id, agent_name=body.agent_name, framework=body.framework
    )
    claimed, errors = await claims.claim_many(service, body.packet_ids, claimant)
    return BatchClaimed(claimed=[to_read(packet) for packet in claimed], errors=errors)


@router.post("/batch/complete", response_model=BatchCompleted)
async def batch_complete(
    body: BatchComplete, request: Request, session: Session, caller: Caller
) -> BatchCompleted:
    """Complete several in-progress packets; failures are reported per id."""
    service = _service(request, session, caller)
    done, errors = await updates.complete_many(service, body.packet_ids)
    return BatchCompleted(
        completed=[to_read(packet) for packet in done],
        errors=[BatchItemError(packet_id=packet_id, error=error) for packet_id, error in errors],
    )


@router.post(
    "/claim-next",
    response_model=PacketRead,
    responses={204: {"description": "No claimable packet matches"}},
)
async def claim_next(body: ClaimNext, request: Request, session: Session, caller: Caller) -> Any:
    """Claim the oldest highest-priority claimable packet; 204 when none matches."""
    service = _service(request, session, caller)
    packet = await claims.claim_next(service, body, last=True)
    if packet is None:
        return Response(status_code=204)
    return to_read(packet)


@router.get("/{packet_id}", response_model=PacketRead)
async def get_packet(
    packet_id: uuid.UUID, request: Request, session: Session, caller: Caller
) -> PacketRead:
    """One packet."""
    service = _service(request, session, caller)
    return to_read(await service.load(packet_id))


@router.patch("/{packet_id}", response_model=PacketRead)
async def update_packet(
    packet_id: uuid.UUID,
    body: PacketUpdate,
    request: Request,
    session: Session,
    caller: Caller,
) -> PacketRead:
    """Change status (per the lifecycle table) and merge context, decisions, actions."""
    service = _service(request, session, caller)
    return to_read(await updates.update(service, packet_id, body, last=True))


@router.delete("/{packet_id}", status_code=204)
async def delete_packet(
    packet_id: uuid.UUID, request: Request, session: Session, caller: Caller
) -> Response:
    """Soft delete: the packet becomes expired."""
    service = _service(request, session, caller)
    await service.delete(packet_id)
    return Response(status_code=204)


@router.post("/{packet_id}/claim", response_model=PacketRead)
async def claim_packet(
    packet_id: uuid.UUID,
    body: PacketClaim,
    request: Request,
    session: Session,
    caller: Caller,
) -> PacketRead:
    """Claim a packet: exactly one concurrent claimer wins; the others get 409."""
    service = _service(request, session, caller)
    return to_read(await claims.claim(service, packet_id, body, last=True))


@router.post("/{packet_id}/respond", response_model=PacketRead)
async def respond_to_hitl(
    packet_id: uuid.UUID,
    body: HitlRespond,
    request: Request,
    session: Session,
    caller: Caller,
) -> PacketRead:
    """A human answers a packet awaiting a human."""
    service = _service(request, session, caller)
    return to_read(await service.respond(packet_id, body))


@router.get("/{packet_id}/history", response_model=History)
async def packet_history(
    packet_id: uuid.UUID, request: Request, session: Session, caller: Caller
) -> History:
    """Every event of a packet, oldest first."""
    service = _service(request, session, caller)
    return await service.history(packet_id)


@router.post("/{packet_id}/chain", status_code=201, response_model=PacketRead)
async def chain_handoff(
    packet_id: uuid.UUID,
    body: Annotated[ChainRequest, Body()],
    request: Request,
    session: Session,
    caller: Caller,
) -> PacketRead:
    """Hand off onward: a child packet that inherits the parent's conversation."""
    service = _service(request, session, caller)
    return to_read(await service.chain(packet_id, body))


#: the hot endpoints served by fast lanes (`api/lanes.py`) when a request is ordinary
_ID = (("packet_id", uuid.UUID),)
LANES = (
    LaneSpec("POST", "/api/v1/packets", create_packet, PacketCreate, PacketRead, 201),
    LaneSpec("POST", "/api/v1/packets/claim-next", claim_next, ClaimNext, PacketRead),
    LaneSpec("GET", "/api/v1/packets/{packet_id}", get_packet, None, PacketRead, path_types=_ID),
    LaneSpec(
        "POST",
        "/api/v1/packets/{packet_id}/claim",
        claim_packet,
        PacketClaim,
        PacketRead,
        path_types=_ID,
    ),
    LaneSpec(
        "PATCH",
        "/api/v1/packets/{packet_id}",
        update_packet,
        PacketUpdate,
        PacketRead,
        path_types=_ID,
    ),
)
