"""Small clients for SDK users: following the event stream (the SDK's SSE client 0.3.0 cannot
connect to any server, CONTRACT.md §6)."""

from handoffrail_server.client.stream import StreamError, follow_events

__all__ = ["StreamError", "follow_events"]
