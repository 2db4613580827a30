"""Wire shapes of the webhooks API (CONTRACT.md §5 Webhooks)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from handoffrail_server.api.wire import NoNulModel

#: event names a webhook may subscribe to (CONTRACT.md §5); anything else is 422
EVENT_TYPES: tuple[str, ...] = (
    "packet.created",
    "packet.claimed",
    "packet.in_progress",
    "packet.awaiting_human",
    "packet.completed",
    "packet.failed",
    "packet.expired",
    "hitl.response_ready",
    "hitl.timed_out",
)
DEFAULT_EVENTS = ["packet.created", "packet.claimed", "packet.completed", "packet.failed"]
TEST_EVENT = "webhook.test"


def _check_events(value: list[str]) -> list[str]:
    unknown = [event for event in value if event not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event {unknown[0]!r}; valid events: {list(EVENT_TYPES)}")
    return list(dict.fromkeys(value))


class WebhookCreate(NoNulModel):
    """POST /hooks body; a missing secret is generated and returned once."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(min_length=8, max_length=2048)
    events: list[str] = Field(default_factory=lambda: list(DEFAULT_EVENTS), max_length=16)
    secret: str | None = Field(default=None, min_length=16, max_length=256)

    _events = field_validator("events")(_check_events)


class WebhookUpdate(NoNulModel):
    """PATCH /hooks/{id} body."""

    model_config = ConfigDict(extra="ignore")

    url: str | None = Field(default=None, min_length=8, max_length=2048)
    events: list[str] | None = Field(default=None, max_length=16)
    active: bool | None = None

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_events(value)


class WebhookRead(BaseModel):
    """An endpoint as the SDK's WebhookResponse parses it; `secret` only when just made."""

    id: str
    url: str
    events: list[str]
    tenant_id: str
    active: bool
    created_at: datetime
    updated_at: datetime
    secret: str | None = None


class DeliveryRead(BaseModel):
    """One delivery (outbox row)."""

    id: str
    webhook_id: str
    event_id: str
    packet_id: str | None
    event_type: str
    status: str
    attempts: int
    last_error: str | None
    last_status_code: int | None
    next_retry_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime


class AttemptRead(BaseModel):
    """One HTTP attempt of a delivery."""

    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_excerpt: str | None


class ReplayResult(BaseModel):
    """POST /hooks/dlq/{id}/replay answer."""

    delivery_id: str
    replayed: bool


class RetryAllResult(BaseModel):
    """POST /hooks/dlq/retry-all answer: deliveries queued again for the worker."""

    retried: int
    succeeded: int = 0
    failed: int = 0
    queued: int


def delivery_to_read(row: Any) -> DeliveryRead:
    """Wire shape of a delivery row."""
    return DeliveryRead(
        id=str(row.id),
        webhook_id=row.webhook_id,
        event_id=str(row.event_id),
        packet_id=str(row.packet_id) if row.packet_id else None,
        event_type=row.event_type,
        status=row.status,
        attempts=row.attempts,
        last_error=row.last_error,
        last_status_code=row.last_status_code,
        next_retry_at=row.next_attempt_at if row.status in {"pending", "failed"} else None,
        delivered_at=row.delivered_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def new_id() -> str:
    """A new endpoint id."""
    return str(uuid.uuid4())
