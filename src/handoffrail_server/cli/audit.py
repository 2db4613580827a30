"""`handoffrail audit export`: stream a tenant's audit trail to a file as JSONL or CSV."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn

from handoffrail_server.audit import service as audit
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.settings import SettingsError, load_settings

audit_app = typer.Typer(help="Audit trail.", no_args_is_help=True)
console = Console(stderr=True)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@audit_app.command("export")
def export(
    output: Annotated[Path, typer.Argument(help="File to write (- for standard output).")],
    tenant: Annotated[str, typer.Option(help="Tenant id.")] = "default",
    format: Annotated[str, typer.Option(help="jsonl or csv.")] = "jsonl",
    since: Annotated[
        datetime | None, typer.Option(help="Only rows at or after (ISO 8601).")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option(help="Only rows at or before (ISO 8601).")
    ] = None,
) -> None:
    """Export the audit trail oldest first, streamed in batches (bounded memory)."""
    if format not in {"jsonl", "csv"}:
        console.print("[red]error:[/red] --format must be jsonl or csv")
        raise typer.Exit(2)
    try:
        settings = load_settings()
    except SettingsError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    filters = audit.EventFilter(created_after=_utc(since), created_before=_utc(until))

    async def main() -> int:
        engine = create_engine(settings.database_url, pool_size=1, max_overflow=0)
        rows = 0
        try:
            sessions = create_sessionmaker(engine)
            target = None if str(output) == "-" else output.open("w", encoding="utf-8")
            try:
                with Progress(
                    SpinnerColumn(), TextColumn("{task.description}"), console=console
                ) as progress:
                    task = progress.add_task("exporting", total=None)
                    async for chunk in audit.export_lines(sessions, tenant, filters, format):
                        if target is None:
                            typer.echo(chunk, nl=False)
                        else:
                            target.write(chunk)
                        rows += 1
                        if rows % 1000 == 0:
                            progress.update(task, description=f"exported {rows} rows")
            finally:
                if target is not None:
                    target.close()
        finally:
            await engine.dispose()
        return rows

    count = asyncio.run(main())
    if format == "csv":
        count -= 1  # header line
    console.print(f"exported {count} audit rows")
