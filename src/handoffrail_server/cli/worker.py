"""`handoffrail worker`, `handoffrail jobs list|run`, `handoffrail webhooks replay|retry-dead`."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from handoffrail_server.clock import SystemClock
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.errors import DomainError
from handoffrail_server.observability.logging import configure_logging
from handoffrail_server.settings import Settings, SettingsError, load_settings
from handoffrail_server.webhooks import service as webhooks
from handoffrail_server.worker.jobs import JOBS, JobContext, run_job
from handoffrail_server.worker.runner import run_worker

jobs_app = typer.Typer(help="Scheduled jobs (what cron platforms run).", no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhook deliveries.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        errors.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, json_logs=not settings.is_development)
    return settings


def worker(
    schedule: Annotated[
        bool, typer.Option(help="Also run the scheduled jobs (one tick cluster-wide).")
    ] = True,
) -> None:
    """Deliver webhooks and run scheduled jobs until SIGTERM (in-flight work finishes)."""
    settings = _settings()
    asyncio.run(run_worker(settings, schedule=schedule))


@jobs_app.command("list")
def jobs_list() -> None:
    """List the jobs and their schedule."""
    table = Table("job", "every", "what")
    for job in JOBS.values():
        every = f"{job.interval_seconds}s" if job.interval_seconds else "on demand"
        table.add_row(job.name, every, job.description)
    console.print(table)


@jobs_app.command("run")
def jobs_run(name: str) -> None:
    """Run one job once now and exit (exit 1 on failure)."""
    if name not in JOBS:
        errors.print(f"[red]unknown job {name!r}[/red]; known: {', '.join(JOBS)}")
        raise typer.Exit(2)
    settings = _settings()

    async def main() -> str:
        engine = create_engine(settings.database_url, pool_size=2, max_overflow=2)
        try:
            context = JobContext(create_sessionmaker(engine), settings, SystemClock())
            return await run_job(context, name)
        finally:
            await engine.dispose()

    try:
        result = asyncio.run(main())
    except Exception as exc:
        errors.print(f"[red]job {name} failed:[/red] {type(exc).__name__}")
        raise typer.Exit(1) from None
    console.print(f"{name}: {result}")


def _replay(delivery_id: uuid.UUID | None, since: datetime | None) -> int:
    settings = _settings()

    async def main() -> int:
        engine = create_engine(settings.database_url, pool_size=1, max_overflow=0)
        try:
            async with unit_of_work(create_sessionmaker(engine)) as session:
                if delivery_id is not None:
                    await webhooks.replay(session, SystemClock(), None, delivery_id)
                    return 1
                return await webhooks.replay_since(session, SystemClock(), None, since)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except DomainError as exc:
        errors.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(1) from None


@webhooks_app.command("replay")
def webhooks_replay(delivery_id: uuid.UUID) -> None:
    """Queue one dead-lettered delivery again (any tenant)."""
    _replay(delivery_id, None)
    console.print(f"queued {delivery_id}")


@webhooks_app.command("retry-dead")
def webhooks_retry_dead(
    since: Annotated[
        datetime | None, typer.Option(help="Only deliveries dead-lettered since (ISO 8601).")
    ] = None,
) -> None:
    """Queue every dead-lettered delivery again (optionally only recent ones)."""
    moment = since.replace(tzinfo=UTC) if since and since.tzinfo is None else since
    console.print(f"queued {_replay(None, moment)} deliveries")
