"""Packet use cases: create, read, list, search, delete, respond, chain, history.

Claims live in `claims.py`, PATCH in `updates.py`. Every state change is a compare-and-set
(never read-then-write) and writes its event row in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.clock import Clock
from handoffrail_server.db.fast import json_size
from handoffrail_server.db.models import Packet
from handoffrail_server.db.rows import transient
from handoffrail_server.errors import DomainError
from handoffrail_server.limits import service as quotas
from handoffrail_server.limits.errors import DailyHandoffQuotaExceeded, PacketTooLarge
from handoffrail_server.limits.service import TenantLimits
from handoffrail_server.observability import metrics
from handoffrail_server.packets import changes, policy, repository
from handoffrail_server.packets.errors import (
    BatchTooLarge,
    ConcurrentUpdate,
    InvalidCursorError,
    NoHitlCheckpoint,
    NotAwaitingHuman,
    PacketAlreadyExpired,
    PacketNotFound,
)
from handoffrail_server.packets.lifecycle import (
    PacketStatus,
    initial_status,
)
from handoffrail_server.packets.schemas import (
    BatchCreated,
    BatchCreateError,
    ChainRequest,
    History,
    HistoryEvent,
    HitlRespond,
    PacketCreate,
    PacketPage,
    PacketRead,
)
from handoffrail_server.realtime import service as streams
from handoffrail_server.schema_registry import service as registry
from handoffrail_server.webhooks import service as webhooks

MAX_CAS_ATTEMPTS = 8


def to_read(packet: Packet) -> PacketRead:
    """Wire shape of a packet row."""
    return PacketRead(
        id=packet.id,
        version=packet.version,
        parent_packet_id=packet.parent_packet_id,
        metadata=packet.packet_metadata,
        context=packet.context,
        decisions=packet.decisions,
        actions=packet.actions,
        dependencies=packet.dependencies,
        hitl=packet.hitl,
        status=PacketStatus(packet.status),
        schema_id=packet.schema_id,
        created_at=packet.created_at,
        updated_at=packet.updated_at,
    )


def validation_summary(error: ValidationError) -> str:
    """One line naming the first invalid field."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid"))
    return f"{where}: {message}" if where else message


class PacketService:
    """Packet use cases for one tenant within one unit of work."""

    def __init__(
        self,
        session: AsyncSession,
        clock: Clock,
        tenant_id: str,
        *,
        key_id: str | None = None,
        request_id: str | None = None,
        ttl_seconds: int = 86_400,
        max_batch: int = 50,
        limits: TenantLimits | None = None,
    ) -> None:
        self.session = session
        self.clock = clock
        self.tenant_id = tenant_id
        self.key_id = key_id
        self.request_id = request_id
        self.ttl_seconds = ttl_seconds
        self.max_batch = max_batch
        self.limits = limits
        self.origin = changes.Origin(tenant_id, key_id, request_id)

    # -- shared helpers -------------------------------------------------------------------

    async def load(self, packet_id: uuid.UUID) -> Packet:
        """The packet or `PacketNotFound` (other tenants' packets are not found either)."""
        packet = await repository.get(self.session, self.tenant_id, packet_id)
        if packet is None:
            raise PacketNotFound(f"Packet {packet_id} not found")
        return packet

    async def settle(self, change: repository.Change, fan_out: bool) -> None:
        """After a change is written: stream wake-up, webhook fan-out if still due, metrics."""
        streams.wake_after_commit(self.session, self.tenant_id)
        # Transactional outbox: webhook rows commit (or roll back) with the state change.
        await webhooks.enqueue_packet_event(
            self.session, self.tenant_id, change.webhook, may_have_subscriber=fan_out
        )
        event = change.event
        if event.event_type == "created":
            metrics.PACKETS_CREATED.labels(self.tenant_id).inc()
        elif event.event_type == PacketStatus.COMPLETED:
            metrics.HANDOFFS.labels(self.tenant_id).inc()
        if event.from_status is not None and event.from_status != event.to_status:
            metrics.PACKET_TRANSITIONS.labels(event.to_status).inc()

    async def record(
        self,
        packet: Packet,
        event_type: str,
        actor: str,
        *,
        from_status: str | None = None,
        details: dict[str, Any] | None = None,
        created_tags: Sequence[str] | None = None,
        last: bool = False,
    ) -> None:
        """Append an event row (and its stream event and webhook outbox rows) in the current
        transaction; with `created_tags`, insert `packet` and its tags first. `last`: the unit
        of work writes nothing after this (see `repository.Change`)."""
        change = changes.build(
            self.clock,
            self.origin,
            packet,
            event_type,
            actor,
            from_status=from_status,
            details=details,
            created_tags=created_tags,
            last=last,
        )
        await self.settle(change, await repository.write_change(self.session, change))

    async def change_and_record(
        self,
        packet: Packet,
        values: dict[str, Any],
        event_type: str,
        actor: str | Callable[[Packet], str],
        *,
        from_status: str | None = None,
        details: dict[str, Any] | None = None,
        allowed_statuses: Sequence[str] | None = None,
        recent_row: bool = False,
        live_at: datetime | None = None,
        last: bool = False,
    ) -> Packet | None:
        """Compare-and-set `values` on `packet` and record the event if it won (one statement
        on PostgreSQL); None when someone else changed the row first. `actor` may be computed
        from the packet as it will be after the change. `recent_row`, `live_at`: see
        `repository.change_if_unchanged`."""
        after = repository.applied(packet, values)
        change = changes.build(
            self.clock,
            self.origin,
            after,
            event_type,
            actor(after) if callable(actor) else actor,
            from_status=from_status,
            details=details,
            last=last,
        )
        updated, fan_out = await repository.change_if_unchanged(
            self.session,
            packet,
            values,
            change,
            allowed_statuses=allowed_statuses,
            recent_row=recent_row,
            live_at=live_at,
        )
        if updated is not None:
            await self.settle(change, fan_out)
        return updated

    @staticmethod
    def agent_actor(packet: Packet) -> str:
        """`agent:<id>` of whoever holds (or is meant to receive) the packet."""
        return f"agent:{packet.claimed_by_agent_id or packet.target_agent_id}"

    # -- create -------------------------------------------------------------------------------

    def _check_size(self, document: dict[str, Any]) -> None:
        """A chained packet carries its parent's conversation, which its request body did not:
        the tier's packet size holds for the packet as stored, or chains would grow past it."""
        if self.limits is None:
            return
        size, limit = json_size(document), self.limits.quotas.max_packet_size
        if size > limit:
            metrics.QUOTA_REJECTIONS.labels(self.limits.tier, "max_packet_size").inc()
            what = "Chained packet (with the parent's conversation)"
            raise PacketTooLarge(size, limit, self.limits.tier, what=what)

    async def _insert(
        self,
        body: ChainRequest,
        *,
        parent_packet_id: uuid.UUID | None,
        prefix_conversation: Sequence[dict[str, Any]] = (),
        last: bool = False,
    ) -> Packet:
        document = body.model_dump(mode="json", exclude={"schema_id", "parent_packet_id"})
        if prefix_conversation:
            document["context"]["conversation_state"] = [
                *prefix_conversation,
                *document["context"]["conversation_state"],
            ]
            self._check_size(document)
        if body.schema_id:
            await registry.validate_context(
                self.session, self.tenant_id, body.schema_id, document["context"]
            )
        now = self.clock.now()
        metadata = document["metadata"]
        metadata["created_at"] = metadata.get("created_at") or now.isoformat()
        metadata["claimed_at"] = None
        metadata["completed_at"] = None
        tags = [str(tag) for tag in metadata.get("tags", [])]
        if self.limits is not None:
            # Quota is taken in this transaction: a packet that is not created costs nothing.
            source, target = metadata["source_agent"], metadata["target_agent"]
            await quotas.register_agents(
                self.session,
                self.clock,
                self.limits,
                [
                    (source["id"], source["name"], source.get("framework")),
                    (target["id"], target["name"], target.get("framework")),
                ],
            )
            await quotas.consume_handoffs(self.session, self.clock, self.limits)
        status = initial_status(body.hitl is not None and body.hitl.required)
        packet = transient(
            Packet,
            id=uuid.uuid4(),
            tenant_id=self.tenant_id,
            parent_packet_id=parent_packet_id,
            version="1.0.0",
            status=status.value,
            priority=metadata["priority"],
            priority_rank=policy.PRIORITY_RANK[metadata["priority"]],
            source_agent_id=metadata["source_agent"]["id"],
            target_agent_id=metadata["target_agent"]["id"],
            schema_id=body.schema_id,
            packet_metadata=metadata,
            context=document["context"],
            decisions=document["decisions"],
            actions=document["actions"],
            dependencies=document["dependencies"],
            hitl=document["hitl"],
            search_text=policy.search_text(document),
            row_version=1,
            created_at=now,
            updated_at=now,
            expires_at=policy.deadline(
                now,
                now,
                self.ttl_seconds,
                document["hitl"] if status is PacketStatus.AWAITING_HUMAN else None,
            ),
        )
        details: dict[str, Any] = {"status": status.value}
        if parent_packet_id:
            details["parent_packet_id"] = str(parent_packet_id)
        await self.record(
            packet,
            "created",
            f"agent:{packet.source_agent_id}",
            details=details,
            created_tags=tags,
            last=last,
        )
        return packet

    async def create(self, body: PacketCreate, *, last: bool = False) -> Packet:
        """Create a packet; a `parent_packet_id` must name a packet of the same tenant.

        `last=True`: the unit of work writes nothing else (a single create request), so on
        PostgreSQL the packet may be written by one statement that commits on its own."""
        if body.parent_packet_id is not None:
            await self.load(body.parent_packet_id)
        return await self._insert(body, parent_packet_id=body.parent_packet_id, last=last)

    async def create_many(self, raw_packets: list[dict[str, Any]]) -> BatchCreated:
        """Create each valid packet; report the others by index. A daily quota already spent
        when the batch starts is the whole batch's 429 (as the original server and its SDK
        expect: `RateLimitError` with `retry_after`); one that runs out part-way leaves the
        packets made so far and reports the rest by index."""
        if len(raw_packets) > self.max_batch:
            raise BatchTooLarge(f"Batch size exceeds maximum of {self.max_batch}")
        created: list[PacketRead] = []
        errors: list[BatchCreateError] = []
        with registry.shared_validation_budget():
            for index, raw in enumerate(raw_packets):
                try:
                    body = PacketCreate.model_validate(raw)
                    async with self.session.begin_nested():
                        created.append(to_read(await self.create(body)))
                except ValidationError as exc:
                    errors.append(BatchCreateError(index=index, error=validation_summary(exc)))
                except DailyHandoffQuotaExceeded as exc:
                    if not created:
                        raise
                    errors.append(BatchCreateError(index=index, error=exc.detail))
                except DomainError as exc:
                    errors.append(BatchCreateError(index=index, error=exc.detail))
        return BatchCreated(created=created, errors=errors)

    async def chain(self, parent_id: uuid.UUID, body: ChainRequest) -> Packet:
        """Create a child packet that inherits the parent's conversation (parent in any state)."""
        parent = await self.load(parent_id)
        child = await self._insert(
            body,
            parent_packet_id=parent.id,
            prefix_conversation=parent.context.get("conversation_state", []),
        )
        await self.record(
            parent,
            "chained",
            f"agent:{child.source_agent_id}",
            details={"child_packet_id": str(child.id)},
        )
        return child

    # -- read ---------------------------------------------------------------------------------

    async def page(
        self,
        filters: repository.PacketFilter,
        *,
        limit: int,
        offset: int,
        cursor: str | None,
    ) -> PacketPage:
        """A page of packets newest first (offset or cursor)."""
        position = None
        if cursor:
            try:
                position = policy.decode_cursor(cursor)
            except policy.InvalidCursor:
                raise InvalidCursorError() from None
        result = await repository.list_page(
            self.session, self.tenant_id, filters, limit=limit, offset=offset, cursor=position
        )
        next_cursor = None
        if result.has_more and result.rows:
            last = result.rows[-1]
            next_cursor = policy.encode_cursor(last.created_at, last.id)
        return PacketPage(
            packets=[to_read(row) for row in result.rows],
            total=result.total,
            limit=limit,
            offset=offset,
            next_cursor=next_cursor,
        )

    async def awaiting(self, *, limit: int, offset: int) -> PacketPage:
        """Packets awaiting a human, oldest first."""
        filters = repository.PacketFilter(statuses=[PacketStatus.AWAITING_HUMAN.value])
        result = await repository.list_page(
            self.session,
            self.tenant_id,
            filters,
            limit=limit,
            offset=offset,
            cursor=None,
            oldest_first=True,
        )
        return PacketPage(
            packets=[to_read(row) for row in result.rows],
            total=result.total,
            limit=limit,
            offset=offset,
        )

    async def search(
        self, query: str, filters: repository.PacketFilter, *, limit: int, offset: int
    ) -> PacketPage:
        """Full-text search, best match first; any punctuation in `query` is safe."""
        terms = policy.search_terms(query)
        result = await repository.search(
            self.session, self.tenant_id, terms, filters, limit=limit, offset=offset
        )
        return PacketPage(
            packets=[to_read(row) for row in result.rows],
            total=result.total,
            limit=limit,
            offset=offset,
        )

    async def history(self, packet_id: uuid.UUID) -> History:
        """Every event of a packet, oldest first."""
        await self.load(packet_id)
        events = await repository.history(self.session, self.tenant_id, packet_id)
        return History(
            packet_id=str(packet_id),
            events=[
                HistoryEvent(
                    id=str(event.id),
                    packet_id=str(event.packet_id),
                    event_type=event.event_type,
                    actor=event.actor,
                    details=event.details,
                    timestamp=event.created_at,
                )
                for event in events
            ],
        )

    # -- change (PATCH: updates.py) ------------------------------------------------------------

    async def delete(self, packet_id: uuid.UUID) -> None:
        """Soft delete: the packet becomes `expired`."""
        for _attempt in range(MAX_CAS_ATTEMPTS):
            packet = await self.load(packet_id)
            if packet.status == PacketStatus.EXPIRED:
                raise PacketAlreadyExpired(f"Packet {packet_id} is already expired")
            previous = packet.status
            updated = await repository.compare_and_set(
                self.session,
                packet,
                {"status": PacketStatus.EXPIRED.value, "updated_at": self.clock.now()},
            )
            if updated is not None:
                await self.record(updated, "expired", "system:soft_delete", from_status=previous)
                return
        raise ConcurrentUpdate(f"Packet {packet_id} is being changed concurrently; retry")

    async def respond(self, packet_id: uuid.UUID, body: HitlRespond) -> Packet:
        """Record a human's answer; the packet goes back to `claimed`."""
        for _attempt in range(MAX_CAS_ATTEMPTS):
            packet = await self.load(packet_id)
            if packet.status != PacketStatus.AWAITING_HUMAN:
                raise NotAwaitingHuman(
                    f"Packet {packet_id} is not awaiting human input (status: {packet.status})"
                )
            if packet.hitl is None:
                raise NoHitlCheckpoint(f"Packet {packet_id} has no HITL checkpoint")
            now = self.clock.now()
            hitl = dict(packet.hitl)
            hitl.update(
                response=body.response,
                responded_by=body.responded_by,
                responded_at=now.isoformat(),
                notes=body.notes,
            )
            metadata = dict(packet.packet_metadata)
            metadata["claimed_at"] = now.isoformat()
            updated = await repository.compare_and_set(
                self.session,
                packet,
                {
                    "status": PacketStatus.CLAIMED.value,
                    "hitl": hitl,
                    "packet_metadata": metadata,
                    "claimed_at": now,
                    "updated_at": now,
                    "expires_at": policy.deadline(packet.created_at, now, self.ttl_seconds, None),
                },
                allowed_statuses=[PacketStatus.AWAITING_HUMAN.value],
            )
            if updated is not None:
                await self.record(
                    updated,
                    "hitl_responded",
                    f"human:{body.responded_by}",
                    from_status=PacketStatus.AWAITING_HUMAN.value,
                    details={"response": body.response},
                )
                return updated
        raise ConcurrentUpdate(f"Packet {packet_id} is being changed concurrently; retry")
