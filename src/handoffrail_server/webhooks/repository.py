"""Storage of webhook endpoints, deliveries and attempts. Flushes, never commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db import fast, fast_sqlite
from handoffrail_server.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

RETRYABLE = ("pending", "failed")


async def endpoint(
    session: AsyncSession, tenant_id: str, webhook_id: str
) -> WebhookEndpoint | None:
    """An endpoint of the tenant."""
    result = await session.execute(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == webhook_id, WebhookEndpoint.tenant_id == tenant_id
        )
    )
    return result.scalar_one_or_none()


async def endpoints(session: AsyncSession, tenant_id: str) -> list[WebhookEndpoint]:
    """Every endpoint of the tenant, oldest first."""
    result = await session.execute(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant_id)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    )
    return list(result.scalars())


_ACTIVE_ENDPOINTS = select(WebhookEndpoint).where(
    WebhookEndpoint.tenant_id == bindparam("tenant_id"), WebhookEndpoint.active.is_(True)
)


@dataclass(frozen=True, slots=True)
class PacketWebhook:
    """The webhook event of one packet state change, before it is fanned out to the endpoints
    that subscribe to it (one outbox row each, the same `event_id`)."""

    event_id: uuid.UUID
    event_type: str
    packet_id: uuid.UUID
    payload: dict[str, Any]
    at: datetime


#: one pending delivery per active endpoint of the tenant subscribed to the event (`events` is a
#: JSON array of event names: `?` asks whether it holds this one)
_PG_FAN_OUT_SQL = (
    "INSERT INTO webhook_delivery (id, tenant_id, webhook_id, event_id, packet_id, event_type,"
    " payload, status, attempts, next_attempt_at, created_at, updated_at)"
    " SELECT gen_random_uuid(), tenant_id, id, $1::uuid, $2::uuid, $3::varchar, $4::jsonb,"
    " 'pending', 0, $5::timestamptz, $5::timestamptz, $5::timestamptz"
    " FROM webhook_endpoint WHERE tenant_id = $6::varchar AND active AND events ? $3::varchar"
)


def pg_fan_out(tenant_id: str, event: PacketWebhook, source: str | None = None) -> fast.Statement:
    """PostgreSQL: the outbox rows of `event` as one INSERT … SELECT (no read beforehand; it
    inserts nothing when no endpoint subscribes), to run inside a change's statement; with
    `source` (a CTE name) only when that has a row."""
    sql = _PG_FAN_OUT_SQL
    if source is not None:
        sql += f" AND EXISTS (SELECT FROM {source})"  # nosec B608 - a CTE name from our code
    return fast.Statement(
        sql,
        (
            event.event_id,
            event.packet_id,
            event.event_type,
            fast.dump_json(event.payload),
            event.at,
            tenant_id,
        ),
    )


def pg_fan_out_for_row(tenant_id: str, event: PacketWebhook, source: str) -> fast.Statement:
    """`pg_fan_out(event, source)` where `source` (a CTE name) returns the packet row the event
    is about, picked by the same statement (claim-next): its id, and its metadata merged into
    the payload; `event` gives everything else."""
    sql = (
        "INSERT INTO webhook_delivery (id, tenant_id, webhook_id, event_id, packet_id, event_type,"  # noqa: S608  # nosec B608 - a CTE name from our code, bound values
        " payload, status, attempts, next_attempt_at, created_at, updated_at)"
        f" SELECT gen_random_uuid(), e.tenant_id, e.id, $1::uuid, {source}.id, $2::varchar,"
        f" $3::jsonb || jsonb_build_object('packet_id', {source}.id::text,"
        f" 'metadata', {source}.metadata),"
        " 'pending', 0, $4::timestamptz, $4::timestamptz, $4::timestamptz"
        f" FROM webhook_endpoint e, {source}"
        " WHERE e.tenant_id = $5::varchar AND e.active AND e.events ? $2::varchar"
    )
    return fast.Statement(
        sql,
        (event.event_id, event.event_type, fast.dump_json(event.payload), event.at, tenant_id),
    )


#: SQLite: `pg_fan_out`'s statement; a version-4 UUID per row as SQLite stores one (32 hex
#: digits: random, then the version digit 4 and a variant digit 8-b in their places), and
#: `events` (a JSON array) searched with json_each
_SQLITE_FAN_OUT_SQL = (
    "INSERT INTO webhook_delivery (id, tenant_id, webhook_id, event_id, packet_id, event_type,"
    " payload, status, attempts, next_attempt_at, created_at, updated_at)"
    " SELECT lower(hex(randomblob(4)) || hex(randomblob(2)) || '4'"
    " || substr(hex(randomblob(2)), 2) || substr('89ab', 1 + (random() & 3), 1)"
    " || substr(hex(randomblob(2)), 2) || hex(randomblob(6))),"
    " tenant_id, id, ?, ?, ?, ?, 'pending', 0, ?, ?, ?"
    " FROM webhook_endpoint WHERE tenant_id = ? AND active AND EXISTS"
    " (SELECT 1 FROM json_each(webhook_endpoint.events) WHERE json_each.value = ?)"
)


def sqlite_fan_out(
    session: AsyncSession, tenant_id: str, event: PacketWebhook
) -> fast_sqlite.Statement:
    """SQLite: the outbox rows of `event` as one INSERT … SELECT (`pg_fan_out`'s twin), written
    with the change's own statements (it inserts nothing when no endpoint subscribes)."""
    values = fast_sqlite.bound(
        session,
        WebhookDelivery,
        {
            "event_id": event.event_id,
            "packet_id": event.packet_id,
            "event_type": event.event_type,
            "payload": event.payload,
            "next_attempt_at": event.at,
            "created_at": event.at,
            "updated_at": event.at,
        },
    )
    return fast_sqlite.Statement(_SQLITE_FAN_OUT_SQL, [(*values, tenant_id, event.event_type)])


async def active_endpoints(session: AsyncSession, tenant_id: str) -> list[WebhookEndpoint]:
    """Active endpoints of the tenant (outbox fan-out; every state change asks)."""
    result = await session.execute(_ACTIVE_ENDPOINTS, {"tenant_id": tenant_id})
    return list(result.scalars())


async def active_count(session: AsyncSession, tenant_id: str) -> int:
    """Active endpoints of the tenant (tier cap)."""
    result = await session.execute(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.active.is_(True))
    )
    return int(result.scalar_one())


async def add(session: AsyncSession, row: Any) -> None:
    """Insert a row."""
    session.add(row)
    await session.flush()


async def deliveries(
    session: AsyncSession,
    tenant_id: str,
    *,
    webhook_id: str | None = None,
    statuses: Sequence[str] = (),
    since: datetime | None = None,
    limit: int,
    offset: int,
) -> list[WebhookDelivery]:
    """Deliveries of a tenant (optionally of one endpoint), newest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
    if webhook_id is not None:
        query = query.where(WebhookDelivery.webhook_id == webhook_id)
    if statuses:
        query = query.where(WebhookDelivery.status.in_(list(statuses)))
    if since is not None:
        query = query.where(WebhookDelivery.updated_at >= since)
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    result = await session.execute(query.limit(limit).offset(offset))
    return list(result.scalars())


async def delivery(
    session: AsyncSession, tenant_id: str | None, delivery_id: uuid.UUID
) -> WebhookDelivery | None:
    """One delivery (of the tenant, when given)."""
    query = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
    if tenant_id is not None:
        query = query.where(WebhookDelivery.tenant_id == tenant_id)
    result = await session.execute(query.execution_options(populate_existing=True))
    return result.scalar_one_or_none()


async def attempts(session: AsyncSession, delivery_id: uuid.UUID) -> list[WebhookAttempt]:
    """Attempts of a delivery, first first."""
    result = await session.execute(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == delivery_id)
        .order_by(WebhookAttempt.attempt)
    )
    return list(result.scalars())


async def requeue(
    session: AsyncSession,
    tenant_id: str | None,
    now: datetime,
    *,
    delivery_id: uuid.UUID | None = None,
    since: datetime | None = None,
) -> int:
    """Put dead-lettered deliveries back in the queue (attempt count restarts)."""
    statement = update(WebhookDelivery).where(WebhookDelivery.status == "dead_letter")
    if tenant_id is not None:
        statement = statement.where(WebhookDelivery.tenant_id == tenant_id)
    if delivery_id is not None:
        statement = statement.where(WebhookDelivery.id == delivery_id)
    if since is not None:
        statement = statement.where(WebhookDelivery.updated_at >= since)
    statement = statement.values(
        status="pending",
        attempts=0,
        next_attempt_at=now,
        lease_id=None,
        leased_until=None,
        created_at=now,
        updated_at=now,
    )
    result = await session.execute(statement.execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)


async def lease_due(
    session: AsyncSession, now: datetime, lease_until: datetime, lease_id: uuid.UUID, limit: int
) -> list[WebhookDelivery]:
    """Lease up to `limit` due deliveries to one worker; PostgreSQL skips rows others hold."""
    due = (
        WebhookDelivery.status.in_(RETRYABLE),
        WebhookDelivery.next_attempt_at <= now,
        or_(WebhookDelivery.leased_until.is_(None), WebhookDelivery.leased_until < now),
    )
    query = (
        select(WebhookDelivery.id)
        .where(*due)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = list((await session.execute(query)).scalars())
    if not ids:
        return []
    statement = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids), *due)
        .values(lease_id=lease_id, leased_until=lease_until)
        .returning(WebhookDelivery)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return list((await session.execute(statement)).scalars())


async def finish(
    session: AsyncSession, delivery_id: uuid.UUID, lease_id: uuid.UUID, values: dict[str, Any]
) -> bool:
    """Record an outcome only if this worker still holds the lease."""
    statement = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.lease_id == lease_id)
        .values(**values, lease_id=None, leased_until=None)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(statement)
    return bool(getattr(result, "rowcount", 0))


async def queue_stats(session: AsyncSession, now: datetime) -> tuple[int, float, int]:
    """(waiting deliveries, age in seconds of the oldest due one, dead-letter count)."""
    waiting = await session.execute(
        select(func.count(), func.min(WebhookDelivery.next_attempt_at)).where(
            WebhookDelivery.status.in_(RETRYABLE)
        )
    )
    count, oldest = waiting.one()
    dead = await session.execute(
        select(func.count())
        .select_from(WebhookDelivery)
        .where(WebhookDelivery.status == "dead_letter")
    )
    age = 0.0
    if oldest is not None:
        oldest_at = oldest if isinstance(oldest, datetime) else datetime.fromisoformat(str(oldest))
        if oldest_at.tzinfo is None:
            oldest_at = oldest_at.replace(tzinfo=now.tzinfo)
        age = max(0.0, (now - oldest_at).total_seconds())
    return int(count), age, int(dead.scalar_one())


async def prune_delivered(session: AsyncSession, before: datetime) -> int:
    """Delete delivered deliveries (and their attempts) older than `before`."""
    result = await session.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.status == "delivered", WebhookDelivery.updated_at < before
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
