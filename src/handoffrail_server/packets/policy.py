"""Packet rules that need no storage (PURE): priorities, search text, merges, cursors, queries."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

PRIORITY_RANK: dict[str, int] = {"low": 0, "normal": 1, "high": 2, "critical": 3}
MAX_SEARCH_TEXT = 32_000
MAX_SEARCH_TERMS = 16
_WORD = re.compile(r"\w+", re.UNICODE)


def search_text(document: dict[str, Any]) -> str:
    """The words a packet is found by: summary, conversation, decisions, actions, tags, agents."""
    metadata = document.get("metadata", {})
    context = document.get("context", {})
    parts: list[str] = [str(context.get("summary", ""))]
    for agent_key in ("source_agent", "target_agent"):
        agent = metadata.get(agent_key) or {}
        parts.extend(str(agent.get(field) or "") for field in ("id", "name"))
    parts.extend(str(tag) for tag in metadata.get("tags", []))
    for entry in context.get("conversation_state", []):
        parts.append(str(entry.get("content", "")))
    for artifact in context.get("artifacts", []):
        parts.append(str(artifact.get("key", "")))
        if isinstance(artifact.get("value"), str):
            parts.append(artifact["value"])
    for decision in document.get("decisions", []):
        parts.extend(str(decision.get(field, "")) for field in ("decision", "rationale"))
    actions = document.get("actions", {})
    for bucket in ("pending", "completed", "failed"):
        parts.extend(str(action.get("description", "")) for action in actions.get(bucket, []))
    text = " ".join(part for part in parts if part)
    return text[:MAX_SEARCH_TEXT]


def search_terms(query: str) -> list[str]:
    """Words of a user query; punctuation never reaches the search engine's own syntax."""
    return _WORD.findall(query)[:MAX_SEARCH_TERMS]


def fts5_match(terms: Iterable[str]) -> str:
    """An FTS5 MATCH expression that ANDs each term as a quoted string (no operators pass)."""
    return " ".join('"' + term.replace('"', '""') + '"' for term in terms)


def merge_decisions(current: list[dict[str, Any]], incoming: list[dict[str, Any]]) -> list[Any]:
    """Merge by `id`: a decision with a known id replaces it in place, new ids are appended."""
    merged = list(current)
    index = {item.get("id"): position for position, item in enumerate(merged)}
    for item in incoming:
        position = index.get(item.get("id"))
        if position is None:
            index[item.get("id")] = len(merged)
            merged.append(item)
        else:
            merged[position] = item
    return merged


def merge_actions(current: dict[str, Any], incoming: dict[str, Any]) -> dict[str, Any]:
    """Replace each of pending/completed/failed that the update carries."""
    merged = {"pending": [], "completed": [], "failed": []} | dict(current)
    for bucket in ("pending", "completed", "failed"):
        if bucket in incoming:
            merged[bucket] = incoming[bucket]
    return merged


def deadline(
    created_at: datetime, now: datetime, ttl_seconds: int, hitl: dict[str, Any] | None
) -> datetime:
    """When an unfinished packet expires: its TTL, or sooner while a HITL timeout runs."""
    expires = created_at + timedelta(seconds=ttl_seconds)
    timeout = (hitl or {}).get("timeout_seconds")
    if isinstance(timeout, int) and not isinstance(timeout, bool) and timeout > 0:
        expires = min(expires, now + timedelta(seconds=timeout))
    return expires


class InvalidCursor(ValueError):
    """The cursor was not made by us."""


def encode_cursor(created_at: datetime, packet_id: uuid.UUID) -> str:
    """Opaque URL-safe cursor for keyset pagination (newest first)."""
    raw = json.dumps({"created_at": created_at.isoformat(), "id": str(packet_id)})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Inverse of `encode_cursor`; raises `InvalidCursor` on anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        created_at = datetime.fromisoformat(data["created_at"])
        if created_at.tzinfo is not None:
            created_at.astimezone(UTC)  # an offset past the years 1-9999 in UTC: OverflowError
        packet_id = uuid.UUID(str(data["id"]))
    except (
        OverflowError,
        ValueError,
        KeyError,
        TypeError,
        UnicodeError,
        binascii.Error,
        json.JSONDecodeError,
        RecursionError,  # a ~1,500-character cursor of nested JSON arrays
    ) as exc:
        raise InvalidCursor("Invalid cursor") from exc
    if created_at.tzinfo is None:
        raise InvalidCursor("Invalid cursor")
    return created_at, packet_id


def split_csv(value: str | None) -> list[str]:
    """`a, b,,c` → ['a', 'b', 'c']."""
    if not value:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]
