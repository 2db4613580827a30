"""How a group-commit sender takes what was handed over (db/group_commit.py `_take`): with
nothing else on its way to the database, half now and half beside it; otherwise full batches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from handoffrail_server.db import fast, group_commit


class _Loop:
    """Records the senders `_take` starts instead of starting them."""

    def __init__(self) -> None:
        self.started = 0

    def call_soon(self, *_args: Any) -> None:
        self.started += 1


def _groups(handed: dict[str, int], sending: int) -> tuple[group_commit._Groups, _Loop]:
    """Members handed over per statement text; a text named `queue…` contends with itself
    (`commit(beside=False)`, as claim-next)."""
    loop = _Loop()
    groups = group_commit._Groups(engine=None, loop=loop)  # type: ignore[arg-type]
    real = asyncio.new_event_loop()
    try:
        for sql, count in handed.items():
            groups.pending[sql] = [
                group_commit._Member(
                    fast.Statement(sql), real.create_future(), not sql.startswith("queue")
                )
                for _ in range(count)
            ]
    finally:
        real.close()
    groups.sending = sending
    return groups, loop


@pytest.mark.parametrize(
    ("handed", "sending", "taken", "left"),
    [
        ({"a": 10}, 0, [5], 5),  # the loop would idle: two batches side by side
        ({"a": 10}, 1, [10], 0),  # one is on its way already: no need to split
        ({"a": 1}, 0, [1], 0),
        ({"a": 3}, 0, [2], 1),
        ({"a": 40}, 0, [16], 24),  # never more than MAX_BATCH
        ({"a": 40}, 2, [16], 24),
        ({"a": 4, "b": 6}, 0, [4, 1], 5),  # texts apart, half of all in all
        ({"a": 4, "b": 6}, 1, [4, 6], 0),
        ({"queue": 10}, 0, [10], 0),  # contending statements are never split
        ({"queue": 20}, 0, [16], 4),
    ],
)
def test_a_sender_takes_half_when_nothing_else_is_on_its_way(
    handed: dict[str, int], sending: int, taken: list[int], left: int
) -> None:
    groups, loop = _groups(handed, sending)
    batches = group_commit._take(groups)
    assert [len(batch) for batch in batches] == taken
    assert sum(len(members) for members in groups.pending.values()) == left
    assert loop.started == (1 if left else 0)  # what is left goes at once, beside it
    assert groups.waiting is bool(left)
