"""The lifecycle table against CONTRACT.md §4, cell by cell; the expectation is written out here."""

from __future__ import annotations

import itertools

import pytest

from handoffrail_server.packets.lifecycle import (
    ACTIVE,
    CLAIMABLE,
    FINISHED,
    TERMINAL,
    ClaimRefusal,
    IllegalTransition,
    PacketStatus,
    can_transition,
    check_transition,
    claim_refusal,
    initial_status,
)

STATUSES = (
    "created",
    "claimed",
    "in_progress",
    "awaiting_human",
    "completed",
    "failed",
    "expired",
)

# CONTRACT.md §4, copied by hand: rows are sources, columns are targets in STATUSES order.
# "-" cells of the contract (same status) and the never-reachable "created" column are False:
# a same-status PATCH is a service-level no-op, not a transition.
Y, N = True, False
EXPECTED: dict[str, tuple[bool, ...]] = {
    #                 created claimed in_prog awaiting completed failed expired
    "created": (N, Y, N, Y, N, Y, Y),
    "claimed": (N, N, Y, Y, N, Y, Y),
    "in_progress": (N, N, N, Y, Y, Y, Y),
    "awaiting_human": (N, Y, Y, N, N, Y, Y),
    "completed": (N, N, N, N, N, N, Y),
    "failed": (N, N, N, N, N, N, Y),
    "expired": (N, N, N, N, N, N, N),
}

EXPECTED_ALLOWED_TEXT = {
    "created": "['awaiting_human', 'claimed', 'expired', 'failed']",
    "claimed": "['awaiting_human', 'expired', 'failed', 'in_progress']",
    "in_progress": "['awaiting_human', 'completed', 'expired', 'failed']",
    "awaiting_human": "['claimed', 'expired', 'failed', 'in_progress']",
    "completed": "['expired']",
    "failed": "['expired']",
    "expired": "[]",
}

ALL_PAIRS = list(itertools.product(STATUSES, STATUSES))
ALLOWED_PAIRS = [
    (source, target) for source, target in ALL_PAIRS if EXPECTED[source][STATUSES.index(target)]
]
REFUSED_PAIRS = [
    (source, target) for source, target in ALL_PAIRS if not EXPECTED[source][STATUSES.index(target)]
]


def test_status_enum_has_exactly_the_seven_contract_values() -> None:
    assert [status.value for status in PacketStatus] == list(STATUSES)


def test_expected_matrix_covers_every_pair() -> None:
    assert len(ALL_PAIRS) == 49
    assert len(ALLOWED_PAIRS) + len(REFUSED_PAIRS) == 49
    assert len(ALLOWED_PAIRS) == 18


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS)
def test_can_transition_matches_contract_cell(source: str, target: str) -> None:
    expected = EXPECTED[source][STATUSES.index(target)]
    assert can_transition(PacketStatus(source), PacketStatus(target)) is expected


@pytest.mark.parametrize(("source", "target"), ALLOWED_PAIRS)
def test_check_transition_accepts_allowed_pair(source: str, target: str) -> None:
    check_transition(PacketStatus(source), PacketStatus(target))


@pytest.mark.parametrize(("source", "target"), REFUSED_PAIRS)
def test_check_transition_refuses_with_contract_wording(source: str, target: str) -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_transition(PacketStatus(source), PacketStatus(target))

    allowed = EXPECTED_ALLOWED_TEXT[source]
    expected = (
        f"Cannot transition from '{source}' to '{target}'. "
        f"Allowed transitions from '{source}': {allowed}"
    )
    assert caught.value.message == expected
    assert str(caught.value) == expected
    assert caught.value.source is PacketStatus(source)
    assert caught.value.target is PacketStatus(target)


@pytest.mark.parametrize("source", STATUSES)
def test_allowed_list_in_error_names_exactly_the_contract_targets(source: str) -> None:
    targets = sorted(target for target in STATUSES if EXPECTED[source][STATUSES.index(target)])
    assert EXPECTED_ALLOWED_TEXT[source] == repr(targets)
    error = IllegalTransition(PacketStatus(source), PacketStatus(source))
    assert error.allowed == targets


def test_claimed_cannot_be_completed_without_starting_first() -> None:
    with pytest.raises(IllegalTransition, match="Cannot transition from 'claimed' to 'completed'"):
        check_transition(PacketStatus.CLAIMED, PacketStatus.COMPLETED)
    check_transition(PacketStatus.CLAIMED, PacketStatus.IN_PROGRESS)
    check_transition(PacketStatus.IN_PROGRESS, PacketStatus.COMPLETED)


def test_expired_is_the_only_terminal_status() -> None:
    assert {status.value for status in TERMINAL} == {"expired"}
    for target in STATUSES:
        assert not can_transition(PacketStatus.EXPIRED, PacketStatus(target))


def test_every_non_expired_status_can_be_soft_deleted() -> None:
    for source in STATUSES[:-1]:
        assert can_transition(PacketStatus(source), PacketStatus.EXPIRED)


def test_nothing_ever_returns_to_created() -> None:
    for source in STATUSES:
        assert not can_transition(PacketStatus(source), PacketStatus.CREATED)


def test_status_groups_match_contract() -> None:
    assert {status.value for status in CLAIMABLE} == {"created", "awaiting_human"}
    assert {status.value for status in FINISHED} == {"completed", "failed", "expired"}
    assert {status.value for status in ACTIVE} == {
        "created",
        "claimed",
        "in_progress",
        "awaiting_human",
    }


@pytest.mark.parametrize(
    ("status", "refusal"),
    [
        ("created", None),
        ("awaiting_human", None),
        ("claimed", ClaimRefusal.ALREADY_CLAIMED),
        ("expired", ClaimRefusal.EXPIRED),
        ("in_progress", ClaimRefusal.BAD_STATUS),
        ("completed", ClaimRefusal.BAD_STATUS),
        ("failed", ClaimRefusal.BAD_STATUS),
    ],
)
def test_claim_refusal_per_status(status: str, refusal: ClaimRefusal | None) -> None:
    assert claim_refusal(PacketStatus(status)) is refusal


@pytest.mark.parametrize("status", STATUSES)
def test_claim_is_refused_exactly_when_the_table_forbids_moving_to_claimed(status: str) -> None:
    allowed = EXPECTED[status][STATUSES.index("claimed")]
    assert (claim_refusal(PacketStatus(status)) is None) is allowed


def test_new_packet_awaits_human_only_when_hitl_is_required() -> None:
    assert initial_status(hitl_required=True) is PacketStatus.AWAITING_HUMAN
    assert initial_status(hitl_required=False) is PacketStatus.CREATED
