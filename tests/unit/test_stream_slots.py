"""Stream slots: the tier's cap holds, and each slot is given back exactly once."""

from __future__ import annotations

from handoffrail_server.realtime.slots import reserve


def test_slots_stop_at_the_cap_and_come_back_once() -> None:
    counts: dict[str, int] = {}
    first = reserve(counts, "t", 2)
    second = reserve(counts, "t", 2)
    assert first is not None
    assert second is not None
    assert reserve(counts, "t", 2) is None
    assert reserve(counts, "other", 2) is not None  # per tenant
    first.release()
    first.release()  # a second release gives nothing back twice
    assert counts["t"] == 1
    third = reserve(counts, "t", 2)
    assert third is not None
    assert reserve(counts, "t", 2) is None
    second.release()
    third.release()
    assert counts["t"] == 0
