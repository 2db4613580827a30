"""Scheduled jobs: one registry used by the worker's schedule and by `handoffrail jobs run NAME`.

Render cron, Fly scheduled machines and Kubernetes CronJobs all run `handoffrail jobs run NAME`,
the same code the worker's schedule runs. A tick of a job runs at most once cluster-wide: its
`job_run(name, tick)` row is inserted in the job's own transaction (primary key conflict = some
other worker has it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handoffrail_server.clock import Clock
from handoffrail_server.db.models import AdminAudit, JobRun, PacketEvent, Tenant
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.observability import metrics
from handoffrail_server.packets.deadlines import expire_due
from handoffrail_server.realtime import repository as stream_repository
from handoffrail_server.settings import Settings
from handoffrail_server.webhooks import repository as webhook_repository
from handoffrail_server.webhooks.delivery import Deliverer, create_http_client


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a job may use."""

    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    clock: Clock


JobFunction = Callable[[JobContext], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Job:
    """A named job and how often the worker's schedule runs it (0 = only on demand)."""

    name: str
    interval_seconds: int
    run: JobFunction
    description: str


async def _expire_packets(context: JobContext) -> str:
    total = 0
    while True:
        async with unit_of_work(context.sessions) as session:
            count = await expire_due(
                session, context.clock, limit=500, ttl_seconds=context.settings.packet_ttl_seconds
            )
        total += count
        if count < 500:
            return f"expired {total} packet(s)"


async def _prune_deliveries(context: JobContext) -> str:
    before = context.clock.now() - timedelta(days=context.settings.webhook_delivery_retention_days)
    async with unit_of_work(context.sessions) as session:
        count = await webhook_repository.prune_delivered(session, before)
    return f"pruned {count} delivered webhook deliveries"


async def _purge_audit(context: JobContext) -> str:
    tiers = context.settings.tiers
    now = context.clock.now()
    purged = 0
    async with unit_of_work(context.sessions) as session:
        tenants = (await session.execute(select(Tenant.id, Tenant.tier))).all()
        for tenant_id, tier in tenants:
            days = tiers.get(tier, tiers["free"]).audit_retention_days
            if not days:  # None keeps everything; 0 means the tier has no audit trail to purge
                continue
            result = await session.execute(
                delete(PacketEvent).where(
                    PacketEvent.tenant_id == tenant_id,
                    PacketEvent.created_at < now - timedelta(days=days),
                )
            )
            purged += int(getattr(result, "rowcount", 0) or 0)
            result = await session.execute(
                delete(AdminAudit).where(
                    AdminAudit.tenant_id == tenant_id,
                    AdminAudit.created_at < now - timedelta(days=days),
                )
            )
            purged += int(getattr(result, "rowcount", 0) or 0)
    return f"purged {purged} audit row(s) past their tier's retention"


async def _prune_stream_events(context: JobContext) -> str:
    before = context.clock.now() - timedelta(seconds=context.settings.stream_retention_seconds)
    async with unit_of_work(context.sessions) as session:
        count = await stream_repository.prune(session, before)
    return f"pruned {count} stream event(s) past the resume window"


async def _deliver_webhooks(context: JobContext) -> str:
    async with create_http_client(context.settings) as http:
        deliverer = Deliverer(context.sessions, context.settings, context.clock, http)
        total = 0
        for _round in range(100):
            count = await deliverer.run_once(context.settings.worker_concurrency)
            total += count
            if count == 0:
                break
    return f"attempted {total} webhook deliveries"


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job(
            "expire-packets",
            60,
            _expire_packets,
            "Expire unfinished packets past their TTL or HITL timeout",
        ),
        Job("purge-audit", 3600, _purge_audit, "Delete audit rows older than the tier's retention"),
        Job("prune-deliveries", 3600, _prune_deliveries, "Delete old delivered webhook rows"),
        Job(
            "prune-stream-events",
            3600,
            _prune_stream_events,
            "Delete stream events older than the resume window",
        ),
        Job("deliver-webhooks", 0, _deliver_webhooks, "Deliver every due webhook once and exit"),
    )
}


async def _claim_tick(session: AsyncSession, name: str, tick: int, now: datetime) -> bool:
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(JobRun)
        .values(name=name, tick=tick, started_at=now)
        .on_conflict_do_nothing(index_elements=[JobRun.name, JobRun.tick])
        .returning(JobRun.name)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def run_job(context: JobContext, name: str) -> str:
    """Run one job now (on demand; no tick bookkeeping)."""
    job = JOBS[name]
    try:
        result = await job.run(context)
    except Exception:
        metrics.JOB_RUNS.labels(name, "error").inc()
        raise
    metrics.JOB_RUNS.labels(name, "ok").inc()
    return result


async def run_due(context: JobContext) -> list[tuple[str, str]]:
    """Run every scheduled job whose current tick nobody has run yet."""
    ran: list[tuple[str, str]] = []
    now = context.clock.now()
    for job in JOBS.values():
        if job.interval_seconds <= 0:
            continue
        tick = int(now.timestamp() // job.interval_seconds)
        async with unit_of_work(context.sessions) as session:
            if not await _claim_tick(session, job.name, tick, now):
                continue
        # The tick row is committed first: a crash mid-job skips this tick; the next one runs.
        ran.append((job.name, await run_job(context, job.name)))
    return ran


__all__ = ["JOBS", "Job", "JobContext", "run_due", "run_job"]
