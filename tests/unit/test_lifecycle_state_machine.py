"""Hypothesis state machine: a model of a few packets driven only by the pure lifecycle rules.

Invariants (STYLE.md Tests): expired is final, completed/failed only move to expired, and there is
never more than one claimer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from handoffrail_server.packets.lifecycle import (
    ClaimRefusal,
    IllegalTransition,
    PacketStatus,
    can_transition,
    check_transition,
    claim_refusal,
    initial_status,
)

AGENTS = ("agent-a", "agent-b", "agent-c")
STATUS_VALUES = frozenset(
    {"created", "claimed", "in_progress", "awaiting_human", "completed", "failed", "expired"}
)


@dataclass
class ModelPacket:
    """What the model knows about one packet."""

    status: PacketStatus
    path: list[PacketStatus] = field(default_factory=list)
    claimers: set[str] = field(default_factory=set)

    def move(self, target: PacketStatus) -> None:
        self.status = target
        self.path.append(target)
        if target is PacketStatus.AWAITING_HUMAN:
            # Handing the packet to a human releases it: the next claim may go to anyone.
            self.claimers.clear()


class PacketModel(RuleBasedStateMachine):
    """A few packets, claimed, patched, answered and soft-deleted by several agents."""

    packets = Bundle("packets")

    def __init__(self) -> None:
        super().__init__()
        self.all_packets: list[ModelPacket] = []

    def _new_packet(self, hitl_required: bool) -> ModelPacket:
        status = initial_status(hitl_required)
        packet = ModelPacket(status=status, path=[status])
        self.all_packets.append(packet)
        return packet

    @initialize(target=packets, hitl_required=st.booleans())
    def first_packet(self, hitl_required: bool) -> ModelPacket:
        return self._new_packet(hitl_required)

    @rule(target=packets, hitl_required=st.booleans())
    def create(self, hitl_required: bool) -> ModelPacket:
        return self._new_packet(hitl_required)

    @rule(packet=packets, agent=st.sampled_from(AGENTS))
    def claim(self, packet: ModelPacket, agent: str) -> None:
        before = packet.status
        refusal = claim_refusal(before)
        if before is PacketStatus.CLAIMED:
            assert refusal is ClaimRefusal.ALREADY_CLAIMED
        if before is PacketStatus.EXPIRED:
            assert refusal is ClaimRefusal.EXPIRED
        if refusal is not None:
            return
        check_transition(before, PacketStatus.CLAIMED)
        # Additive on purpose: a claim granted while someone holds the packet breaks the invariant.
        packet.claimers.add(agent)
        packet.move(PacketStatus.CLAIMED)

    def _patch(self, packet: ModelPacket, new_status: PacketStatus) -> None:
        before = packet.status
        if new_status is before:
            return  # same-status PATCH is a no-op (CONTRACT.md §4)
        if can_transition(before, new_status):
            check_transition(before, new_status)
            packet.move(new_status)
            return
        with pytest.raises(IllegalTransition) as caught:
            check_transition(before, new_status)
        assert new_status.value not in caught.value.allowed
        assert packet.status is before

    @rule(packet=packets, new_status=st.sampled_from(list(PacketStatus)))
    def patch_any_status(self, packet: ModelPacket, new_status: PacketStatus) -> None:
        self._patch(packet, new_status)

    # The SDK's verbs are PATCHes too; separate rules make the useful paths likely.
    @rule(packet=packets)
    def start(self, packet: ModelPacket) -> None:
        self._patch(packet, PacketStatus.IN_PROGRESS)

    @rule(packet=packets)
    def complete(self, packet: ModelPacket) -> None:
        self._patch(packet, PacketStatus.COMPLETED)

    @rule(packet=packets)
    def fail(self, packet: ModelPacket) -> None:
        self._patch(packet, PacketStatus.FAILED)

    @rule(packet=packets)
    def request_human(self, packet: ModelPacket) -> None:
        self._patch(packet, PacketStatus.AWAITING_HUMAN)

    @rule(packet=packets)
    def respond(self, packet: ModelPacket) -> None:
        if packet.status is not PacketStatus.AWAITING_HUMAN:
            return  # 409: not awaiting a human
        check_transition(PacketStatus.AWAITING_HUMAN, PacketStatus.CLAIMED)
        packet.move(PacketStatus.CLAIMED)

    @rule(packet=packets)
    def soft_delete(self, packet: ModelPacket) -> None:
        if packet.status is PacketStatus.EXPIRED:
            return  # 409: already expired
        check_transition(packet.status, PacketStatus.EXPIRED)
        packet.move(PacketStatus.EXPIRED)

    @invariant()
    def status_is_a_contract_value(self) -> None:
        for packet in self.all_packets:
            assert isinstance(packet.status, PacketStatus)
            assert packet.status.value in STATUS_VALUES

    @invariant()
    def expired_never_changes(self) -> None:
        for packet in self.all_packets:
            if PacketStatus.EXPIRED in packet.path:
                first = packet.path.index(PacketStatus.EXPIRED)
                assert all(step is PacketStatus.EXPIRED for step in packet.path[first:])

    @invariant()
    def finished_work_only_moves_to_expired(self) -> None:
        for packet in self.all_packets:
            for before, after in zip(packet.path, packet.path[1:], strict=False):
                if before in (PacketStatus.COMPLETED, PacketStatus.FAILED):
                    assert after is PacketStatus.EXPIRED

    @invariant()
    def never_re_enters_created(self) -> None:
        for packet in self.all_packets:
            assert PacketStatus.CREATED not in packet.path[1:]

    @invariant()
    def at_most_one_claimer(self) -> None:
        for packet in self.all_packets:
            assert len(packet.claimers) <= 1


PacketModel.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_packet_lifecycle_model = PacketModel.TestCase
