"""The delivery side of the outbox: lease due rows, POST them signed, record every attempt.

Leases make delivery crash-safe: a worker killed mid-delivery leaves rows whose lease expires,
and another worker delivers them again (at least once; receivers deduplicate on `webhook-id`).
An outcome is written only while the lease is still held, so a slow, presumed-dead worker never
overwrites a newer attempt.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handoffrail_server.clock import Clock
from handoffrail_server.db.models import WebhookAttempt
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.observability import metrics
from handoffrail_server.settings import Settings
from handoffrail_server.webhooks import crypto, egress, repository, retry, signing

log = structlog.get_logger(__name__)

MAX_EXCERPT = 1024


@dataclass(frozen=True, slots=True)
class Leased:
    """A delivery this worker holds a lease on."""

    id: uuid.UUID
    lease_id: uuid.UUID
    webhook_id: str
    tenant_id: str
    event_id: uuid.UUID
    event_type: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one HTTP attempt produced."""

    ok: bool
    status_code: int | None
    error: str | None
    excerpt: str | None
    duration_ms: int


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """The shared client: timeouts, no redirects (a redirect could lead anywhere)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.webhook_timeout_seconds),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        trust_env=False,
    )


class Deliverer:
    """Leases and delivers due webhook deliveries."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        clock: Clock,
        http: httpx.AsyncClient,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.http = http

    async def lease(self, limit: int) -> list[Leased]:
        """Lease up to `limit` due deliveries in a short transaction of their own."""
        now = self.clock.now()
        lease_id = uuid.uuid4()
        until = now + timedelta(seconds=self.settings.webhook_lease_seconds)
        async with unit_of_work(self.sessions) as session:
            rows = await repository.lease_due(session, now, until, lease_id, limit)
            return [
                Leased(
                    id=row.id,
                    lease_id=lease_id,
                    webhook_id=row.webhook_id,
                    tenant_id=row.tenant_id,
                    event_id=row.event_id,
                    event_type=row.event_type,
                    payload=row.payload,
                    attempts=row.attempts,
                    created_at=row.created_at,
                )
                for row in rows
            ]

    async def _endpoint(self, leased: Leased) -> tuple[str, str] | None:
        async with unit_of_work(self.sessions) as session:
            row = await repository.endpoint(session, leased.tenant_id, leased.webhook_id)
            if row is None or not row.active:
                return None
            return row.url, crypto.decrypt(
                self.settings.secret_key.get_secret_value(), row.secret_encrypted
            )

    async def post(self, url: str, secret: str, leased: Leased) -> Outcome:
        """One signed POST to the address the SSRF guard checked; failures are outcomes.

        Anything that goes wrong building or sending this one request (a URL httpx cannot
        build, a transport bug) is a failed attempt, retried or dead-lettered like any other,
        so one bad row can never wedge the batch it was leased with."""
        started = time.perf_counter()
        try:
            return await self._post(url, secret, leased, started)
        except egress.EgressRefused as exc:
            return Outcome(False, None, f"refused: {exc}", None, 0)
        except Exception as exc:  # httpx.HTTPError, httpx.InvalidURL and anything unexpected
            elapsed = int((time.perf_counter() - started) * 1000)
            return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:1024], None, elapsed)

    async def _post(self, url: str, secret: str, leased: Leased, started: float) -> Outcome:
        address = await egress.pin_address(url, allow_private=self.settings.webhook_allow_private)
        target = httpx.URL(url)
        host_header = target.netloc.decode("ascii")
        pinned = target.copy_with(host=str(address))
        body = signing.encode_body(leased.payload)
        headers = signing.signed_headers(
            secret=secret,
            body=body,
            event_id=str(leased.event_id),
            delivery_id=str(leased.id),
            event_type=leased.event_type,
            timestamp=self.clock.now(),
        )
        headers["Host"] = host_header
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = self.http.build_request(
            "POST", pinned, content=body, headers=headers, extensions=extensions
        )
        response = await self.http.send(request, stream=True)
        try:
            excerpt = bytearray()
            async for chunk in response.aiter_bytes():
                excerpt.extend(chunk[: MAX_EXCERPT - len(excerpt)])
                if len(excerpt) >= MAX_EXCERPT:
                    break
        finally:
            await response.aclose()
        elapsed = int((time.perf_counter() - started) * 1000)
        ok = 200 <= response.status_code < 300
        error = None if ok else f"HTTP {response.status_code}"
        text = excerpt.decode("utf-8", errors="replace")
        return Outcome(ok, response.status_code, error, text, elapsed)

    async def _attempt(self, leased: Leased) -> tuple[Outcome, bool]:
        """The outcome of one attempt, and whether a failure may be retried."""
        try:
            endpoint = await self._endpoint(leased)
        except crypto.SecretUnreadable as exc:
            # HR_SECRET_KEY changed: retried, so restoring the key lets the delivery through
            return Outcome(False, None, str(exc), None, 0), True
        if endpoint is None:
            return Outcome(False, None, "endpoint inactive or deleted", None, 0), False
        return await self.post(endpoint[0], endpoint[1], leased), True

    async def deliver(self, leased: Leased) -> str:
        """Deliver one leased row and record the attempt; returns the new status."""
        outcome, retryable = await self._attempt(leased)
        metrics.WEBHOOK_LATENCY.observe(outcome.duration_ms / 1000)
        now = self.clock.now()
        attempts = leased.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
            "updated_at": now,
        }
        if outcome.ok:
            values.update(status="delivered", delivered_at=now, next_attempt_at=None)
        else:
            retry_at = None
            if retryable:
                retry_at = retry.next_attempt(
                    attempts,
                    now,
                    leased.created_at,
                    max_attempts=self.settings.webhook_max_attempts,
                    horizon_seconds=self.settings.webhook_retry_horizon_seconds,
                )
            if retry_at is None:
                values.update(status="dead_letter", next_attempt_at=None)
            else:
                values.update(status="failed", next_attempt_at=retry_at)
        async with unit_of_work(self.sessions) as session:
            held = await repository.finish(session, leased.id, leased.lease_id, values)
            if held:
                session.add(
                    WebhookAttempt(
                        id=uuid.uuid4(),
                        delivery_id=leased.id,
                        attempt=attempts,
                        started_at=now,
                        duration_ms=outcome.duration_ms,
                        status_code=outcome.status_code,
                        error=outcome.error,
                        response_excerpt=outcome.excerpt,
                    )
                )
        status = str(values["status"]) if held else "lease_lost"
        metrics.WEBHOOK_DELIVERIES.labels(status).inc()
        log.info(
            "webhook.attempted",
            delivery_id=str(leased.id),
            event_type=leased.event_type,
            outcome=status,
            status_code=outcome.status_code,
            duration_ms=outcome.duration_ms,
        )
        return status

    async def run_once(self, limit: int) -> int:
        """Lease and deliver one batch concurrently; returns how many were attempted."""
        batch = await self.lease(limit)
        if batch:
            # A delivery that still fails (its database writes) must not abort its neighbours:
            # its lease expires and a later batch takes it again.
            results = await asyncio.gather(
                *(self.deliver(leased) for leased in batch), return_exceptions=True
            )
            for leased, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    log.error(
                        "webhook.delivery_crashed",
                        delivery_id=str(leased.id),
                        error=f"{type(result).__name__}: {result}"[:1024],
                    )
        await self.refresh_gauges()
        return len(batch)

    async def refresh_gauges(self) -> None:
        """Queue depth, age and dead-letter size for /metrics."""
        async with unit_of_work(self.sessions) as session:
            depth, age, dead = await repository.queue_stats(session, self.clock.now())
        metrics.WEBHOOK_QUEUE_DEPTH.set(depth)
        metrics.WEBHOOK_QUEUE_AGE.set(age)
        metrics.WEBHOOK_DLQ_SIZE.set(dead)
