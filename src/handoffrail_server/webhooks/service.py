"""Webhook use cases: manage endpoints, write outbox rows with state changes, dead-letter replay.

Outbox rows are written in the caller's transaction, so an event exists exactly when the state
change committed; the worker delivers them later (at least once, stable `event_id`).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.audit import service as audit
from handoffrail_server.clock import Clock
from handoffrail_server.db.models import WebhookDelivery, WebhookEndpoint
from handoffrail_server.errors import Conflict, NotFound, Unprocessable
from handoffrail_server.limits.errors import QuotaExceeded
from handoffrail_server.limits.service import TenantLimits
from handoffrail_server.observability import metrics
from handoffrail_server.webhooks import crypto, egress, repository
from handoffrail_server.webhooks.schemas import (
    TEST_EVENT,
    AttemptRead,
    DeliveryRead,
    WebhookCreate,
    WebhookRead,
    WebhookUpdate,
    delivery_to_read,
    new_id,
)

#: packet event types (history) → webhook event names
EVENT_NAMES: dict[str, str] = {
    "created": "packet.created",
    "claimed": "packet.claimed",
    "in_progress": "packet.in_progress",
    "awaiting_human": "packet.awaiting_human",
    "completed": "packet.completed",
    "failed": "packet.failed",
    "expired": "packet.expired",
    "hitl_responded": "hitl.response_ready",
    "hitl_timed_out": "hitl.timed_out",
}


class WebhookNotFound(NotFound):
    """No such endpoint in the caller's tenant."""

    code = "webhook.not_found"


class DeliveryNotFound(NotFound):
    """No such delivery in the caller's tenant (or it is not dead-lettered)."""

    code = "webhook.delivery_not_found"


class WebhookInactive(Conflict):
    """Deactivating an endpoint twice."""

    code = "webhook.already_inactive"


class WebhookUrlRefused(Unprocessable):
    """The URL targets a private, loopback, link-local or metadata address, or is malformed."""

    code = "webhook.url_refused"


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """What webhook use cases need from settings."""

    secret_key: str
    allow_private: bool


def to_read(row: WebhookEndpoint, secret: str | None = None) -> WebhookRead:
    """Wire shape of an endpoint (secret only when just created or rotated)."""
    return WebhookRead(
        id=row.id,
        url=row.url,
        events=list(row.events),
        tenant_id=row.tenant_id,
        active=row.active,
        created_at=row.created_at,
        updated_at=row.updated_at,
        secret=secret,
    )


async def _check_url(url: str, config: WebhookConfig) -> None:
    try:
        await egress.check_at_creation(url, allow_private=config.allow_private)
    except egress.EgressRefused as exc:
        raise WebhookUrlRefused(str(exc), field="url") from None


async def create(
    session: AsyncSession,
    clock: Clock,
    limits: TenantLimits,
    body: WebhookCreate,
    config: WebhookConfig,
    *,
    actor: str = "system",
) -> WebhookRead:
    """Register an endpoint within the tier's cap; returns the secret only if generated."""
    cap = limits.quotas.max_webhooks
    if cap is not None and await repository.active_count(session, limits.tenant_id) >= cap:
        metrics.QUOTA_REJECTIONS.labels(limits.tier, "max_webhooks").inc()
        raise QuotaExceeded(
            f"The {limits.tier} tier allows {cap} webhook(s)",
            quota="max_webhooks",
            limit=cap,
            tier=limits.tier,
        )
    await _check_url(body.url, config)
    generated = body.secret is None
    secret = body.secret or "whs_" + secrets.token_urlsafe(32)
    now = clock.now()
    row = WebhookEndpoint(
        id=new_id(),
        tenant_id=limits.tenant_id,
        url=body.url,
        events=body.events,
        secret_encrypted=crypto.encrypt(config.secret_key, secret),
        active=True,
        created_at=now,
        updated_at=now,
    )
    await repository.add(session, row)
    await _audit(session, clock, row, actor, "webhook.created", {"events": body.events})
    return to_read(row, secret if generated else None)


async def _audit(
    session: AsyncSession,
    clock: Clock,
    row: WebhookEndpoint,
    actor: str,
    action: str,
    details: dict[str, Any] | None = None,
) -> None:
    await audit.record_admin(
        session,
        clock,
        tenant_id=row.tenant_id,
        actor=actor,
        action=action,
        resource_type="webhook",
        resource_id=row.id,
        details=details,
    )


async def _owned(session: AsyncSession, tenant_id: str, webhook_id: str) -> WebhookEndpoint:
    row = await repository.endpoint(session, tenant_id, webhook_id)
    if row is None:
        raise WebhookNotFound(f"Webhook {webhook_id} not found")
    return row


async def list_all(session: AsyncSession, tenant_id: str) -> list[WebhookRead]:
    """Every endpoint of the tenant, inactive ones included."""
    return [to_read(row) for row in await repository.endpoints(session, tenant_id)]


async def get(session: AsyncSession, tenant_id: str, webhook_id: str) -> WebhookRead:
    """One endpoint."""
    return to_read(await _owned(session, tenant_id, webhook_id))


async def update(
    session: AsyncSession,
    clock: Clock,
    tenant_id: str,
    webhook_id: str,
    body: WebhookUpdate,
    config: WebhookConfig,
    *,
    actor: str = "system",
) -> WebhookRead:
    """Change URL, events or active flag."""
    row = await _owned(session, tenant_id, webhook_id)
    if body.url is not None:
        await _check_url(body.url, config)
        row.url = body.url
    if body.events is not None:
        row.events = body.events
    if body.active is not None:
        row.active = body.active
    row.updated_at = clock.now()
    await session.flush()
    changed = sorted(body.model_dump(exclude_none=True))
    await _audit(session, clock, row, actor, "webhook.updated", {"fields": changed})
    return to_read(row)


async def deactivate(
    session: AsyncSession, clock: Clock, tenant_id: str, webhook_id: str, *, actor: str = "system"
) -> None:
    """DELETE /hooks/{id}: stop delivering to the endpoint (kept for its history)."""
    row = await _owned(session, tenant_id, webhook_id)
    if not row.active:
        raise WebhookInactive(f"Webhook {webhook_id} is already inactive")
    row.active = False
    row.updated_at = clock.now()
    await session.flush()
    await _audit(session, clock, row, actor, "webhook.deactivated")


async def rotate_secret(
    session: AsyncSession,
    clock: Clock,
    tenant_id: str,
    webhook_id: str,
    config: WebhookConfig,
    *,
    actor: str = "system",
) -> WebhookRead:
    """Replace the secret; the new one is returned once."""
    row = await _owned(session, tenant_id, webhook_id)
    secret = "whs_" + secrets.token_urlsafe(32)
    row.secret_encrypted = crypto.encrypt(config.secret_key, secret)
    row.updated_at = clock.now()
    await session.flush()
    await _audit(session, clock, row, actor, "webhook.secret_rotated")
    return to_read(row, secret)


def _delivery(
    endpoint: WebhookEndpoint,
    event_id: uuid.UUID,
    event_type: str,
    payload: dict[str, Any],
    packet_id: uuid.UUID | None,
    now: datetime,
) -> WebhookDelivery:
    return WebhookDelivery(
        id=uuid.uuid4(),
        tenant_id=endpoint.tenant_id,
        webhook_id=endpoint.id,
        event_id=event_id,
        packet_id=packet_id,
        event_type=event_type,
        payload=payload,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )


async def send_test(
    session: AsyncSession, clock: Clock, tenant_id: str, webhook_id: str
) -> DeliveryRead:
    """Queue a `webhook.test` event to one endpoint."""
    row = await _owned(session, tenant_id, webhook_id)
    now = clock.now()
    payload = {
        "event": TEST_EVENT,
        "timestamp": now.isoformat(),
        "packet_id": None,
        "status": None,
        "metadata": {},
        "details": {"message": "HandoffRail test event"},
    }
    delivery = _delivery(row, uuid.uuid4(), TEST_EVENT, payload, None, now)
    await repository.add(session, delivery)
    return delivery_to_read(delivery)


def packet_webhook(
    clock: Clock,
    *,
    history_event: str,
    packet_id: uuid.UUID,
    status: str,
    metadata: dict[str, Any],
    details: dict[str, Any] | None,
) -> repository.PacketWebhook | None:
    """The webhook event a packet history event fires, with its payload (None: no webhook)."""
    event_type = EVENT_NAMES.get(history_event)
    if event_type is None:
        return None
    now = clock.now()
    payload: dict[str, Any] = {
        "event": event_type,
        "timestamp": now.isoformat(),
        "packet_id": str(packet_id),
        "status": status,
        "metadata": metadata,
    }
    if details:
        payload["details"] = {key: value for key, value in details.items() if key != "response"}
    return repository.PacketWebhook(uuid.uuid4(), event_type, packet_id, payload, now)


async def enqueue_packet_event(
    session: AsyncSession,
    tenant_id: str,
    event: repository.PacketWebhook | None,
    *,
    may_have_subscriber: bool,
) -> int:
    """Write one outbox row per active endpoint subscribed to `event`; returns the count.

    `may_have_subscriber=False`: the caller has already found no subscriber in this
    transaction (or wrote the rows itself: `repository.pg_fan_out`), so nothing is read."""
    if event is None or not may_have_subscriber:
        return 0
    targets = [
        row
        for row in await repository.active_endpoints(session, tenant_id)
        if event.event_type in row.events
    ]
    for row in targets:
        session.add(
            _delivery(
                row, event.event_id, event.event_type, event.payload, event.packet_id, event.at
            )
        )
    if targets:
        await session.flush()
    return len(targets)


async def list_deliveries(
    session: AsyncSession,
    tenant_id: str,
    webhook_id: str,
    *,
    status: str | None,
    limit: int,
    offset: int,
) -> list[DeliveryRead]:
    """Deliveries of one endpoint, newest first."""
    await _owned(session, tenant_id, webhook_id)
    rows = await repository.deliveries(
        session,
        tenant_id,
        webhook_id=webhook_id,
        statuses=[status] if status else [],
        limit=limit,
        offset=offset,
    )
    return [delivery_to_read(row) for row in rows]


async def list_attempts(
    session: AsyncSession, tenant_id: str, delivery_id: uuid.UUID
) -> list[AttemptRead]:
    """Every attempt of one delivery."""
    if await repository.delivery(session, tenant_id, delivery_id) is None:
        raise DeliveryNotFound(f"Delivery {delivery_id} not found")
    return [
        AttemptRead(
            attempt=row.attempt,
            started_at=row.started_at,
            duration_ms=row.duration_ms,
            status_code=row.status_code,
            error=row.error,
            response_excerpt=row.response_excerpt,
        )
        for row in await repository.attempts(session, delivery_id)
    ]


async def dead_letters(
    session: AsyncSession, tenant_id: str, *, limit: int, offset: int
) -> list[DeliveryRead]:
    """The tenant's dead-lettered deliveries."""
    rows = await repository.deliveries(
        session, tenant_id, statuses=["dead_letter"], limit=limit, offset=offset
    )
    return [delivery_to_read(row) for row in rows]


async def replay(
    session: AsyncSession, clock: Clock, tenant_id: str | None, delivery_id: uuid.UUID
) -> None:
    """Queue one dead-lettered delivery again (same event id, so receivers can deduplicate)."""
    count = await repository.requeue(session, tenant_id, clock.now(), delivery_id=delivery_id)
    if count == 0:
        raise DeliveryNotFound(f"Dead-lettered delivery {delivery_id} not found")


async def replay_since(
    session: AsyncSession, clock: Clock, tenant_id: str | None, since: datetime | None
) -> int:
    """Queue every dead-lettered delivery (updated since `since`) again; returns the count."""
    return await repository.requeue(session, tenant_id, clock.now(), since=since)
