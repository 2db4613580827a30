"""Stream positions through `fast.together` and a batch's renumbering (db/group_commit.py)."""

from __future__ import annotations

import pytest

from handoffrail_server.db import fast, group_commit

STREAM = fast.Statement("INSERT s VALUES ($1, $2)", (0, "a"), positions=(0,))
PLAIN = fast.Statement("INSERT p VALUES ($1)", ("x",))


@pytest.mark.parametrize(
    ("writes", "then", "args", "positions"),
    [
        ([STREAM], fast.Statement("SELECT 1"), (0, "a"), (0,)),
        ([PLAIN, STREAM], fast.Statement("SELECT 1"), ("x", 0, "a"), (1,)),
        (
            [PLAIN, STREAM, PLAIN, STREAM],
            fast.Statement("SELECT 1"),
            ("x", 0, "a", "x", 0, "a"),
            (1, 4),
        ),
        ([PLAIN], fast.Statement("SELECT $1", (0,), positions=(0,)), ("x", 0), (1,)),
        ([PLAIN, PLAIN], fast.Statement("SELECT 1"), ("x", "x"), ()),
    ],
)
def test_together_carries_each_write_s_positions_to_its_place(
    writes: list[fast.Statement],
    then: fast.Statement,
    args: tuple[object, ...],
    positions: tuple[int, ...],
) -> None:
    statement = fast.together(writes, then)
    assert statement.args == args
    assert statement.positions == positions
    assert all(statement.args[index] == 0 for index in statement.positions)


def _unit(events: int) -> fast.Statement:
    """A unit's statement with `events` stream events, numbered from 0 as a unit does."""
    writes = [PLAIN]
    for position in range(events):
        writes.append(fast.Statement("INSERT s VALUES ($1, $2)", (position, "a"), positions=(0,)))
    return fast.together(writes, fast.Statement("SELECT 1"))


@pytest.mark.parametrize(
    ("events", "numbered"),
    [
        ([1], [[0]]),
        ([1, 1, 1], [[0], [1], [2]]),
        ([2, 0, 1], [[0, 1], [], [2]]),
        ([0, 2, 2], [[], [0, 1], [2, 3]]),
    ],
)
def test_a_batch_numbers_its_units_events_one_after_another(
    events: list[int], numbered: list[list[int]]
) -> None:
    statements = [_unit(count) for count in events]
    argument_lists = group_commit.renumbered(statements)
    assert [
        [args[index] for index in statement.positions]
        for statement, args in zip(statements, argument_lists, strict=True)
    ] == numbered
    for statement, args in zip(statements, argument_lists, strict=True):
        others = [i for i in range(len(args)) if i not in statement.positions]
        assert [args[i] for i in others] == [statement.args[i] for i in others]
