"""structlog set-up: JSON outside development, console in development, with redaction.

The redaction processor drops values under sensitive keys and masks anything shaped like an
API key, so secrets never reach a log line even when a caller logs them by mistake.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from functools import lru_cache
from typing import Any

import orjson
import structlog

_SENSITIVE_KEYS = re.compile(
    r"(api[_-]?key|authorization|secret|password|passwd|token|cookie|context|content|"
    r"summary|conversation|hitl_response|response_body|key_hash|dsn)",
    re.IGNORECASE,
)
_KEY_SHAPE = re.compile(r"hr_[A-Za-z0-9_-]{20,}")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def _scrub_text(value: str) -> str:
    if "hr_" in value:
        value = _KEY_SHAPE.sub("hr_***", value)
    if "://" in value:
        value = _URL_PASSWORD.sub(r"\1***@", value)
    return value


@lru_cache(maxsize=1024)
def _sensitive(key: str) -> bool:
    return _SENSITIVE_KEYS.search(key) is not None


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return "..."
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, dict):
        return {
            key: "[redacted]" if _sensitive(str(key)) else _scrub(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(item, depth + 1) for item in value]
    return value


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: remove secrets and packet contents from every event."""
    for key in list(event_dict):
        if key == "event":
            event_dict[key] = _scrub(event_dict[key])
        elif _sensitive(key):
            event_dict[key] = "[redacted]"
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def _json_line(event_dict: Any, **kwargs: Any) -> str:
    """structlog's serializer: orjson (the access log writes a line per request), or `json`
    for what orjson refuses (non-string keys, integers beyond 64 bits)."""
    try:
        return orjson.dumps(event_dict, default=kwargs.get("default")).decode()
    except TypeError:
        return json.dumps(event_dict, **kwargs)


def console_colors(stream: Any, environ: Mapping[str, str]) -> bool:
    """ANSI colours in development logs only for a terminal: a file, a pipe or `docker logs`
    gets plain text. `NO_COLOR` (no-color.org) turns them off, `FORCE_COLOR` on."""
    if environ.get("NO_COLOR"):
        return False
    if environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def _processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks become text BEFORE redaction: exception messages carry URLs and keys too.
        structlog.processors.format_exc_info,
        redact,
    ]


def _renderer(json_logs: bool) -> Any:
    if json_logs:
        return structlog.processors.JSONRenderer(serializer=_json_line)
    return structlog.dev.ConsoleRenderer(
        colors=console_colors(sys.stderr, os.environ),
        exception_formatter=structlog.dev.plain_traceback,
    )


def stdlib_formatter(json_logs: bool = True) -> logging.Formatter:
    """A `logging.Formatter` giving standard-library lines (Uvicorn's, Gunicorn's, libraries')
    the shape, timestamp and redaction of ours; `deploy/gunicorn.conf.py` names it."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_processors()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _renderer(json_logs),
        ],
    )


def configure_logging(level: str = "info", *, json_logs: bool = True) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    processors = _processors()
    renderer = _renderer(json_logs)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # one write() per line: lines from Gunicorn workers sharing a pipe never interleave
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: their lines take the same shape (JSON or
    # console), level, timestamp and redaction as ours, through one stderr handler of ours
    # (added once; handlers others installed, such as pytest's capture, stay).
    formatter = stdlib_formatter(json_logs)
    root = logging.getLogger()
    root.setLevel(numeric)
    ours = [handler for handler in root.handlers if getattr(handler, "_handoffrail", False)]
    if not ours:
        stream = logging.StreamHandler(sys.stderr)
        stream._handoffrail = True  # type: ignore[attr-defined]
        root.addHandler(stream)
        ours = [stream]
    for handler in ours:
        handler.setFormatter(formatter)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


#: libraries whose INFO/DEBUG lines carry what must not be logged: httpx and httpcore the full
#: webhook URL (paths and queries hold receivers' tokens), aiosqlite every statement's
#: parameters (packet contents, key hashes)
QUIET_LIBRARIES = ("httpx", "httpcore", "aiosqlite")
