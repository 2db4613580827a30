"""Limit failures with their wire codes (`rate_limit.*`, `quota.*`)."""

from __future__ import annotations

from typing import Any

from handoffrail_server.errors import DomainError, PermissionDenied


class RateLimited(DomainError):
    """Too many requests in the window; `Retry-After` says when to come back."""

    code = "rate_limit.exceeded"
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, field="rate_limit", **extra)
        self.headers = {"Retry-After": str(max(1, retry_after))}


class DailyHandoffQuotaExceeded(RateLimited):
    """The tenant's daily handoff quota is used up until UTC midnight."""

    code = "quota.handoffs_per_day"


class QuotaExceeded(PermissionDenied):
    """A count quota (keys, agents, webhooks) of the tier is reached (403)."""

    code = "quota.exceeded"

    def __init__(self, detail: str, quota: str, limit: int, tier: str) -> None:
        super().__init__(detail, quota=quota, limit=limit, tier=tier)
        self.code = f"quota.{quota}"


class PacketTooLarge(DomainError):
    """The request body is larger than the tier allows."""

    code = "request.too_large"
    status = 413
    title = "Content too large"

    def __init__(self, size: int, limit: int, tier: str, *, what: str = "Request body") -> None:
        super().__init__(
            f"{what} of {size} bytes exceeds the {tier} tier limit of {limit} bytes",
            limit_bytes=limit,
            tier=tier,
        )
