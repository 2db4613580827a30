"""The log redaction processor, value by value (the contract tests plant secrets end to end)."""

from __future__ import annotations

from typing import Any

import pytest

from handoffrail_server.observability.logging import redact

KEY = "hr_" + "A1b2C3d4E5f6G7h8I9j0K_-z"


@pytest.mark.parametrize(
    ("field", "value", "logged"),
    [
        ("note", "plain text stays", "plain text stays"),
        ("note", f"used {KEY} here", "used hr_*** here"),
        ("note", "hr_short stays", "hr_short stays"),
        ("dsn_hint", "postgresql://app:hunter2@db/hr", "[redacted]"),
        ("target", "postgresql://app:hunter2@db/hr", "postgresql://app:***@db/hr"),
        ("target", "https://example.test/path", "https://example.test/path"),
        ("api_key_id", "k-1", "[redacted]"),
        ("X-Api-Key", KEY, "[redacted]"),
        (
            "nested",
            {"token": "t", "list": [KEY, 1]},
            {"token": "[redacted]", "list": ["hr_***", 1]},
        ),
        ("count", 3, 3),
    ],
)
def test_each_value_is_scrubbed(field: str, value: Any, logged: Any) -> None:
    assert redact(None, "info", {"event": "e", field: value})[field] == logged


def test_the_event_text_itself_is_scrubbed() -> None:
    assert redact(None, "info", {"event": f"bad key {KEY}"})["event"] == "bad key hr_***"
