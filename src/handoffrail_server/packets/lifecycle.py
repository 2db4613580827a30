"""The packet lifecycle (PURE): one transition table, exactly CONTRACT.md §4.

Nothing here touches storage; services ask `check_transition` before every compare-and-set.
"""

from __future__ import annotations

from enum import StrEnum


class PacketStatus(StrEnum):
    """Where a packet is in its life."""

    CREATED = "created"  #: waiting for an agent
    CLAIMED = "claimed"  #: an agent holds it
    IN_PROGRESS = "in_progress"  #: the holder is working on it
    AWAITING_HUMAN = "awaiting_human"  #: blocked on a human decision
    COMPLETED = "completed"  #: done; only soft delete (expired) may follow
    FAILED = "failed"  #: given up; only soft delete (expired) may follow
    EXPIRED = "expired"  #: terminal: TTL, HITL timeout or soft delete


S = PacketStatus

TRANSITIONS: dict[PacketStatus, frozenset[PacketStatus]] = {
    S.CREATED: frozenset({S.CLAIMED, S.AWAITING_HUMAN, S.FAILED, S.EXPIRED}),
    S.CLAIMED: frozenset({S.IN_PROGRESS, S.AWAITING_HUMAN, S.FAILED, S.EXPIRED}),
    S.IN_PROGRESS: frozenset({S.AWAITING_HUMAN, S.COMPLETED, S.FAILED, S.EXPIRED}),
    S.AWAITING_HUMAN: frozenset({S.CLAIMED, S.IN_PROGRESS, S.FAILED, S.EXPIRED}),
    S.COMPLETED: frozenset({S.EXPIRED}),
    S.FAILED: frozenset({S.EXPIRED}),
    S.EXPIRED: frozenset(),
}

#: statuses from which POST /claim (and claim-next) may take a packet
CLAIMABLE: frozenset[PacketStatus] = frozenset({S.CREATED, S.AWAITING_HUMAN})
#: statuses that never change again
TERMINAL: frozenset[PacketStatus] = frozenset({S.EXPIRED})
#: statuses that count as finished work (only soft delete may follow)
FINISHED: frozenset[PacketStatus] = frozenset({S.COMPLETED, S.FAILED, S.EXPIRED})
#: statuses counted by the active-packets gauge
ACTIVE: frozenset[PacketStatus] = frozenset(set(S) - FINISHED)


class IllegalTransition(Exception):
    """`source` may not move to `target`; `message` is the wire text of CONTRACT.md §2."""

    def __init__(self, source: PacketStatus, target: PacketStatus) -> None:
        allowed = sorted(status.value for status in TRANSITIONS[source])
        self.source = source
        self.target = target
        self.allowed = allowed
        self.message = (
            f"Cannot transition from '{source.value}' to '{target.value}'. "
            f"Allowed transitions from '{source.value}': {allowed}"
        )
        super().__init__(self.message)


def can_transition(source: PacketStatus, target: PacketStatus) -> bool:
    """True when the table allows `source` → `target`."""
    return target in TRANSITIONS[source]


def check_transition(source: PacketStatus, target: PacketStatus) -> None:
    """Raise `IllegalTransition` unless the table allows `source` → `target`."""
    if not can_transition(source, target):
        raise IllegalTransition(source, target)


def initial_status(hitl_required: bool) -> PacketStatus:
    """Status of a new packet: awaiting a human when its HITL checkpoint is required."""
    return S.AWAITING_HUMAN if hitl_required else S.CREATED


class ClaimRefusal(StrEnum):
    """Why a claim cannot succeed."""

    ALREADY_CLAIMED = "already_claimed"  #: 409 with who holds it
    EXPIRED = "expired"  #: 410
    BAD_STATUS = "bad_status"  #: 400


def claim_refusal(status: PacketStatus) -> ClaimRefusal | None:
    """None when a packet in `status` can be claimed, else the reason it cannot."""
    if status in CLAIMABLE:
        return None
    if status is S.CLAIMED:
        return ClaimRefusal.ALREADY_CLAIMED
    if status is S.EXPIRED:
        return ClaimRefusal.EXPIRED
    return ClaimRefusal.BAD_STATUS
