"""Resume ids from `Last-Event-ID` / `last_event_id`: ASCII digits or start at now."""

from __future__ import annotations

import pytest

from handoffrail_server.realtime.service import parse_last_event_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("42", 42),
        (" 42 ", 42),
        ("9" * 20, 2**62),
        (None, None),
        ("", None),
        ("-1", None),
        ("4.2", None),
        ("²", None),  # str.isdigit() says yes; int() says no
        ("١٢", None),  # Arabic-Indic digits: int() would read them as 12
        ("9" * 21, None),
        ("9" * 5000, None),  # beyond int()'s 4,300-digit limit
    ],
)
def test_parse_last_event_id(value: str | None, expected: int | None) -> None:
    assert parse_last_event_id(value) == expected
