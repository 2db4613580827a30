"""Packet failures with their wire codes (`packet.*`)."""

from __future__ import annotations

from typing import Any

from handoffrail_server.errors import Conflict, DomainError, InvalidInput, NotFound, Unprocessable


class PacketNotFound(NotFound):
    """No such packet in the caller's tenant."""

    code = "packet.not_found"


class PacketAlreadyClaimed(Conflict):
    """Another agent holds the packet; `claimed_by` names it.

    On the wire `detail` is the object the original server sent, `{"message", "claimed_by"}`
    (CONTRACT.md §2: clients read `detail.claimed_by`); `claimed_by` is also a top-level
    member. RFC 9457 consumers ignore a `detail` that is not a string (§3.1)."""

    code = "packet.already_claimed"

    def __init__(self, detail: str, claimed_by: dict[str, Any] | None) -> None:
        super().__init__(detail, claimed_by=claimed_by)
        self.claimed_by = claimed_by

    def wire_detail(self) -> dict[str, Any]:
        return {"message": self.detail, "claimed_by": self.claimed_by}


class PacketExpired(DomainError):
    """The packet expired (410 Gone)."""

    code = "packet.expired"
    status = 410
    title = "Gone"


class PacketAlreadyExpired(Conflict):
    """Deleting a packet that is already expired."""

    code = "packet.already_expired"


class IllegalTransitionError(InvalidInput):
    """The lifecycle table forbids this status change."""

    code = "packet.illegal_transition"


class NotAwaitingHuman(Conflict):
    """HITL respond on a packet that is not awaiting a human."""

    code = "packet.not_awaiting_human"


class NoHitlCheckpoint(InvalidInput):
    """HITL respond on a packet without a checkpoint."""

    code = "packet.no_hitl"


class BatchTooLarge(InvalidInput):
    """More items than the batch limit."""

    code = "packet.batch_too_large"


class InvalidCursorError(InvalidInput):
    """A cursor we did not make."""

    code = "pagination.invalid_cursor"

    def __init__(self, detail: str = "Invalid cursor") -> None:
        super().__init__(detail, field="cursor")


class InvalidFilter(Unprocessable):
    """A list filter value is not valid."""

    code = "packet.invalid_filter"


class ConcurrentUpdate(Conflict):
    """The packet kept changing under us; retry."""

    code = "packet.concurrent_update"


class NothingToClaim(NotFound):
    """claim-next found no claimable packet."""

    code = "packet.nothing_to_claim"
