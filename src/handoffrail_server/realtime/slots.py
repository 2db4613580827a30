"""Per-tenant stream connection slots: taken at admission, given back exactly once.

A slot is checked and taken with no `await` in between, so parallel connects cannot pass the
tier's cap; an SSE response gives its slot back however it ends, even when its generator never
started (an async generator that never ran runs no `finally`).
"""

from __future__ import annotations

from typing import Any

from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send


class StreamSlot:
    """One of a tenant's open streams in `counts`; `release()` gives it back once."""

    def __init__(self, counts: dict[str, int], tenant_id: str) -> None:
        self._counts = counts
        self.tenant_id = tenant_id
        self._held = True
        counts[tenant_id] = counts.get(tenant_id, 0) + 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._counts[self.tenant_id] -= 1


def reserve(counts: dict[str, int], tenant_id: str, cap: int) -> StreamSlot | None:
    """A slot if the tenant has fewer than `cap` streams open, else None."""
    if counts.get(tenant_id, 0) >= cap:
        return None
    return StreamSlot(counts, tenant_id)


class SlotResponse(EventSourceResponse):
    """An SSE response that releases its slot when it ends, whatever ends it."""

    def __init__(self, *args: Any, slot: StreamSlot, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
