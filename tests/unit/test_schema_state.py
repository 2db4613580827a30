"""Where a database stands against the code: at head, behind (refused), ahead (a newer release
migrated it: accepted with a warning)."""

from __future__ import annotations

import pytest

from handoffrail_server.db import migrations
from handoffrail_server.db.migrations import SchemaState, schema_state


@pytest.mark.parametrize(
    ("current", "state"),
    [
        ("0002", SchemaState.AT_HEAD),
        ("0001", SchemaState.BEHIND),
        (None, SchemaState.BEHIND),
        ("9999", SchemaState.AHEAD),
    ],
)
def test_schema_state(current: str | None, state: SchemaState) -> None:
    assert schema_state(current, "0002", frozenset({"0001", "0002"})) is state


def test_the_scripts_know_their_own_head_and_history() -> None:
    known = migrations.known_revisions()
    assert migrations.head_revision() in known
    assert len(known) >= 7
