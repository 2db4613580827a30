"""Every Redis key and channel name, namespaced `{prefix}:{tenant}:...` (STYLE.md)."""

from __future__ import annotations


def stream_channel(prefix: str, tenant_id: str) -> str:
    """Pub/sub channel announcing new stream events of a tenant (`*` for the pattern)."""
    return f"{prefix}:{tenant_id}:events"


def tenant_from_stream_channel(prefix: str, channel: str) -> str:
    """Inverse of `stream_channel`."""
    return channel[len(prefix) + 1 : -len(":events")]
