"""The log redaction processor, value by value (the contract tests plant secrets end to end)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

from handoffrail_server.observability.logging import console_colors, redact, stdlib_formatter

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


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("tty", "environ", "expected"),
    [
        (True, {}, True),
        (False, {}, False),  # a pipe, a file, `docker logs`: no escape codes
        (True, {"NO_COLOR": "1"}, False),
        (False, {"FORCE_COLOR": "1"}, True),
        (True, {"NO_COLOR": "1", "FORCE_COLOR": "1"}, False),
        (True, {"NO_COLOR": ""}, True),  # set but empty does not count (no-color.org)
    ],
)
def test_console_colours_only_for_a_terminal(
    tty: bool, environ: dict[str, str], expected: bool
) -> None:
    assert console_colors(_Stream(tty), environ) is expected
    assert console_colors(object(), environ) is (expected and "FORCE_COLOR" in environ)


def test_a_server_line_is_one_redacted_json_object_with_its_traceback() -> None:
    # what Gunicorn's and Uvicorn's loggers write through (deploy/gunicorn.conf.py, `serve`)
    formatter = stdlib_formatter(json_logs=True)
    try:
        raise ConnectionError(f"postgresql://app:hunter2@db/hr refused {KEY}")
    except ConnectionError:
        record = logging.getLogger("uvicorn.error").makeRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "Exception in %s", ("app",), sys.exc_info()
        )
    line = formatter.format(record)
    assert "\n" not in line
    event = json.loads(line)
    assert event["event"] == "Exception in app"
    assert event["logger"] == "uvicorn.error"
    assert event["level"] == "error"
    assert "ConnectionError" in event["exception"]
    assert "hunter2" not in line
    assert KEY not in line
    assert "postgresql://app:***@db/hr" in event["exception"]
