"""Follow `GET /events` with httpx: parse SSE frames, yield envelopes, resume after a drop.

Self-contained (httpx only), so it can also be copied next to code that uses the SDK.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

#: statuses worth retrying: tier connection cap not yet released (429), server trouble (5xx)
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class StreamError(RuntimeError):
    """The stream was refused (bad key: 401/403, bad request) or retries ran out."""


def _frames(lines: Iterable[str]) -> Iterator[tuple[str | None, str, str]]:
    """(id, event name, data) per SSE frame; comments skipped, multi-line data joined."""
    event_id: str | None = None
    name, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event_id, name, "\n".join(data)
            event_id, name, data = None, "message", []
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "event":
                name = value
            elif field == "id":
                event_id = value


def follow_events(
    base_url: str,
    api_key: str,
    *,
    last_event_id: str | int | None = None,
    subscribe: Iterable[str] = (),
    timeout: float = 45.0,
    max_retries: int = 5,
    backoff: float = 0.5,
) -> Iterator[dict[str, Any]]:
    """Yield the tenant's event envelopes forever (or until the caller stops iterating).

    Starts after `last_event_id` (or at "now"); on a dropped or silent connection (nothing,
    not even a ping, for `timeout` seconds) it reconnects with `Last-Event-ID` = the last id it
    yielded, so no event is lost or repeated. Gives up after `max_retries` failed attempts in a
    row (exponential backoff from `backoff` seconds, capped at 30 s) by raising `StreamError`.
    The key travels in the `X-API-Key` header, never in the URL (which clients and proxies log).
    """
    params = httpx.QueryParams([("subscribe", channel) for channel in subscribe])
    failures = 0
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(10.0, read=timeout)) as http:
        while True:
            headers = {"X-API-Key": api_key, "Accept": "text/event-stream"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = str(last_event_id)
            error: str
            try:
                with http.stream("GET", "/events", params=params, headers=headers) as response:
                    if response.status_code != 200 and response.status_code not in _RETRY_STATUSES:
                        raise StreamError(f"GET /events refused: HTTP {response.status_code}")
                    if response.status_code == 200:
                        for event_id, name, data in _frames(response.iter_lines()):
                            if name == "connected":
                                failures = 0
                            elif name != "ping":
                                envelope: dict[str, Any] = json.loads(data)
                                last_event_id = event_id or last_event_id
                                yield envelope
                    error = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:  # dropped, refused, or silent too long
                error = type(exc).__name__
            failures += 1
            if failures > max_retries:
                raise StreamError(f"gave up after {max_retries} retries ({error})")
            time.sleep(min(backoff * 2 ** (failures - 1), 30.0))
