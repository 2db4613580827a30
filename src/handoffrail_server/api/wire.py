"""Base for request bodies: refuses NUL characters, unpaired surrogates and non-finite numbers
anywhere in the body.

PostgreSQL can store none of them in text or JSONB, and SQLite cannot encode an unpaired
surrogate (JSON text may spell one, `"\\ud800"`, and `json.loads` accepts it), so they would
otherwise surface as a 500 on one database or both.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from pydantic import BaseModel, model_validator

MAX_DEPTH = 64


def find_unstorable(value: Any, depth: int = 0) -> str | None:
    """Describe the first value PostgreSQL cannot store, or None when all is storable."""
    if depth > MAX_DEPTH:
        return f"nesting deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        if "\x00" in value:
            return "a NUL character (\\u0000)"
        return None if _valid_unicode(value) else "an unpaired surrogate (invalid Unicode)"
    if isinstance(value, float):
        return None if math.isfinite(value) else "a non-finite number (NaN or Infinity)"
    if isinstance(value, dict):
        for key, item in value.items():
            found = find_unstorable(key, depth + 1) or find_unstorable(item, depth + 1)
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for item in value:
            found = find_unstorable(item, depth + 1)
            if found:
                return found
    return None


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surely_storable(value: Any) -> bool:
    """A cheap proof that `value` holds nothing unstorable; False means "walk it to find out".

    orjson refuses an unpaired surrogate anywhere (and what it cannot encode at all, such as
    integers beyond 64 bits), writes NUL as `\\u0000` (the text may hold that sequence
    literally too: then the walk decides) and non-finite numbers as `null`, so they do not
    survive the round trip unchanged; each level of nesting opens at least one `{` or `[`, so
    fewer of those than MAX_DEPTH bounds the depth. (A third of `json.dumps`'s cost.)
    """
    try:
        text = orjson.dumps(value)
    except (TypeError, ValueError, RecursionError):  # orjson.JSONEncodeError is a TypeError
        return False
    return (
        b"\\u0000" not in text
        and text.count(b"{") + text.count(b"[") <= MAX_DEPTH
        and orjson.loads(text) == value
    )


class NoNulModel(BaseModel):
    """Request model that refuses unstorable values before any field validation."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unstorable(cls, data: Any) -> Any:
        found = None if _surely_storable(data) else find_unstorable(data)
        if found:
            raise ValueError(f"body contains {found}, which cannot be stored")
        return data
