"""The worker process: deliver webhooks continuously and, optionally, run the job schedule.

SIGTERM/SIGINT stop leasing new work; deliveries already in flight finish before exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
from prometheus_client import start_http_server

from handoffrail_server.clock import Clock, SystemClock
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.observability import metrics
from handoffrail_server.settings import Settings
from handoffrail_server.webhooks.delivery import Deliverer, create_http_client
from handoffrail_server.worker.jobs import JobContext, run_due

log = structlog.get_logger(__name__)

SCHEDULE_EVERY_SECONDS = 15.0


async def run_worker(
    settings: Settings,
    *,
    schedule: bool = True,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until `stop` is set or a termination signal arrives."""
    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # no signal handlers on Windows loops (NotImplementedError) or off the main thread
        # (RuntimeError, e.g. a worker started by tests): `stop` is the way out there
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    engine = create_engine(
        settings.database_url,
        pool_size=max(2, min(settings.worker_concurrency, settings.db_pool_size)),
        max_overflow=settings.db_max_overflow,
        statement_cache_size=settings.db_statement_cache_size,
        pre_ping=settings.db_pool_pre_ping,
    )
    sessions = create_sessionmaker(engine)
    context = JobContext(sessions=sessions, settings=settings, clock=clock)
    next_schedule = 0.0
    exporter = None
    if settings.worker_metrics_port:
        # its own counters (deliveries by outcome, job runs) live in this process only
        exporter, _thread = start_http_server(
            settings.worker_metrics_port, settings.worker_metrics_host, registry=metrics.registry()
        )
    log.info(
        "worker.started",
        schedule=schedule,
        concurrency=settings.worker_concurrency,
        metrics_port=settings.worker_metrics_port or None,
    )
    try:
        async with create_http_client(settings) as http:
            deliverer = Deliverer(sessions, settings, clock, http)
            while not stop.is_set():
                attempted = 0
                try:
                    attempted = await deliverer.run_once(settings.worker_concurrency)
                    if schedule and loop.time() >= next_schedule:
                        next_schedule = loop.time() + SCHEDULE_EVERY_SECONDS
                        for name, result in await run_due(context):
                            log.info("job.ran", job=name, result=result)
                except Exception as exc:  # keep the worker alive; the next round retries
                    log.warning("worker.round_failed", error=type(exc).__name__)
                if attempted == 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(settings.worker_poll_seconds):
                            await stop.wait()
    finally:
        if exporter is not None:
            exporter.shutdown()
            exporter.server_close()
        await engine.dispose()
        log.info("worker.stopped")
