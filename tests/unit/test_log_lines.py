"""Each log line leaves in one write(): workers sharing a pipe never interleave their lines."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from handoffrail_server.observability.logging import configure_logging


class Recorder:
    """A stand-in stderr that keeps every write() call separately."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        return None


def test_every_json_log_line_is_written_whole_in_one_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder()
    monkeypatch.setattr("sys.stderr", recorder)
    configure_logging("info", json_logs=True)
    try:
        log = structlog.get_logger("tests.lines")
        for n in range(3):
            log.info("test.line", n=n, padding="x" * 500)
    finally:
        configure_logging("warning", json_logs=False)
    lines = [write for write in recorder.writes if "test.line" in write]
    assert len(lines) == 3
    for n, write in enumerate(lines):
        assert write.endswith("\n")
        assert write.count("\n") == 1
        assert json.loads(write)["n"] == n


def test_json_lines_hold_what_orjson_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr("sys.stderr", recorder)
    configure_logging("info", json_logs=True)
    try:
        log = structlog.get_logger("tests.lines")
        log.info("test.fallback", big=2**70, keyed={1: "int key"}, when=object())
    finally:
        configure_logging("warning", json_logs=False)
    (line,) = [write for write in recorder.writes if "test.fallback" in write]
    record = json.loads(line)
    assert record["big"] == 2**70
    assert record["keyed"] == {"1": "int key"}
    assert record["when"].startswith("<object object")


def _our_handler() -> logging.Handler:
    (handler,) = [h for h in logging.getLogger().handlers if getattr(h, "_handoffrail", False)]
    return handler


def test_library_lines_take_our_json_shape_and_redaction() -> None:
    configure_logging("info", json_logs=True)
    try:
        key = "hr_" + "k" * 43
        record = logging.getLogger("some.library").makeRecord(
            "some.library",
            logging.ERROR,
            __file__,
            1,
            "connecting to %s with %s",
            ("postgresql://app:hunter2@db:5432/hr", key),
            None,
        )
        line = _our_handler().format(record)
    finally:
        configure_logging("warning", json_logs=False)
    body = json.loads(line)
    assert body["logger"] == "some.library"
    assert body["level"] == "error"
    assert "timestamp" in body
    assert "hunter2" not in line
    assert key not in line
    assert body["event"] == "connecting to postgresql://app:***@db:5432/hr with hr_***"


@pytest.mark.parametrize("level", ["debug", "info"])
def test_libraries_that_log_urls_or_parameters_stay_at_warning(level: str) -> None:
    configure_logging(level, json_logs=True)
    try:
        for name in ("httpx", "httpcore", "aiosqlite"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
            assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
        assert logging.getLogger("some.library").isEnabledFor(logging.getLevelName(level.upper()))
    finally:
        configure_logging("warning", json_logs=False)
