"""The `handoffrail` command: serve, migrate, keys, tenants.

Plain keys are printed to the console once and never logged.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.api.roles import Role
from handoffrail_server.cli import ops
from handoffrail_server.cli.audit import audit_app
from handoffrail_server.cli.bench import bench
from handoffrail_server.cli.worker import jobs_app, webhooks_app, worker
from handoffrail_server.clock import SystemClock
from handoffrail_server.db import migrations
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.errors import DomainError
from handoffrail_server.keys import service as keys_service
from handoffrail_server.keys import tokens
from handoffrail_server.keys.schemas import ApiKeyRead
from handoffrail_server.settings import Settings, SettingsError, load_settings, redact_url
from handoffrail_server.tenants import service as tenants_service

T = TypeVar("T")

app = typer.Typer(help="HandoffRail server: run, migrate and administer.", no_args_is_help=True)
migrate_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants.", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(jobs_app, name="jobs")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(audit_app, name="audit")
app.command()(worker)
app.command()(bench)
ops.register(app, migrate_app)  # backup, restore, smoke, migrate history

console = Console()
errors = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        errors.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def _run_db(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def runner() -> T:
        engine = create_engine(settings.database_url, pool_size=1, max_overflow=0)
        try:
            async with unit_of_work(create_sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(runner())
    except DomainError as exc:
        errors.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(1) from None


def _print_key_once(plain: str, title: str) -> None:
    console.print(f"[bold green]{title}[/bold green] (shown once; store it now):")
    console.print(plain, soft_wrap=True, highlight=False)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default HR_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default HR_PORT, 8080).")] = None,
    reload: Annotated[bool, typer.Option(help="Reload on code changes (development).")] = False,
) -> None:
    """Run the API server with Uvicorn (development applies migrations itself)."""
    import structlog
    import uvicorn

    from handoffrail_server.infra.serving import HttpProtocol
    from handoffrail_server.observability.logging import configure_logging

    settings = _settings()
    if settings.is_development:
        console.print(f"applying migrations to {redact_url(settings.database_url)}")
        migrations.upgrade(settings.database_url)
        plain = (
            settings.bootstrap_api_key.get_secret_value() if settings.bootstrap_api_key else None
        )
        first = _run_db(
            settings,
            lambda session: keys_service.bootstrap(
                session, SystemClock(), plain=plain, tier=settings.tier_default
            ),
        )
        if first and plain is None:
            _print_key_once(first, "First admin (operator) API key")
    bind_host = host or settings.host
    bind_port = port or settings.port
    url = f"http://{bind_host}:{bind_port}/api/v1"
    # Uvicorn's own lines (start-up, shutdown, a failed request's traceback) go through our
    # handler: JSON and redacted outside development, like every other line
    configure_logging(settings.log_level, json_logs=not settings.is_development)
    if settings.is_development:
        console.print(f"HandoffRail listening on {url}")
    else:
        structlog.get_logger(__name__).info("server.listening", url=url)
    uvicorn.run(
        "handoffrail_server.asgi:app",
        host=bind_host,
        port=bind_port,
        reload=reload,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_level=settings.log_level,
        access_log=False,
        http=HttpProtocol,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        log_config=None,
    )


@migrate_app.command("up")
def migrate_up(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Upgrade the database (safe to run from several processes at once on PostgreSQL)."""
    settings = _settings()
    migrations.upgrade(settings.database_url, revision)
    console.print(f"database at {revision}")


@migrate_app.command("down")
def migrate_down(revision: Annotated[str, typer.Argument()] = "-1") -> None:
    """Downgrade the database (default: one revision)."""
    settings = _settings()
    migrations.downgrade(settings.database_url, revision)
    console.print(f"database downgraded to {revision}")


@migrate_app.command("current")
def migrate_current() -> None:
    """Print the database revision and the code's head revision."""
    settings = _settings()

    async def current() -> str | None:
        engine = create_engine(settings.database_url, pool_size=1, max_overflow=0)
        try:
            return await migrations.current_revision(engine)
        finally:
            await engine.dispose()

    revision = asyncio.run(current())
    head = migrations.head_revision()
    console.print(f"current: {revision or 'none'}  head: {head}")
    if revision != head:
        raise typer.Exit(1)


@keys_app.command("generate")
def keys_generate() -> None:
    """Print a new random key (for HR_BOOTSTRAP_API_KEY); stores nothing."""
    console.print(tokens.generate_key(), highlight=False)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[
        str, typer.Option(help="Tenant name (created if missing).")
    ] = "Default Tenant",
    role: Annotated[Role, typer.Option(help="Role of the key.")] = Role.ADMIN,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "cli key",
) -> None:
    """Create a key and print it once."""
    settings = _settings()

    async def work(session: AsyncSession) -> tuple[str, str, bool]:
        if tenant == tenants_service.DEFAULT_TENANT_NAME:
            await tenants_service.ensure_default(session, SystemClock(), tier=settings.tier_default)
        key, created = await keys_service.create_for_tenant_name(
            session,
            SystemClock(),
            tenant_name=tenant,
            name=name,
            role=role,
            tier=settings.tier_default,
        )
        assert key.key is not None
        return key.key, key.tenant_id, created

    plain, tenant_id, created = _run_db(settings, work)
    if created:
        console.print(f"created tenant {tenant!r} ({tenant_id})")
    _print_key_once(plain, f"{role.value} key for tenant {tenant_id}")


@keys_app.command("list")
def keys_list(tenant: Annotated[str, typer.Option(help="Tenant id.")] = "default") -> None:
    """List a tenant's keys (prefixes only)."""
    settings = _settings()

    async def work(session: AsyncSession) -> list[ApiKeyRead]:
        operator = keys_service.Principal("cli", "cli", tenant, Role.ADMIN, True)
        return await keys_service.list_for(session, operator, tenant)

    table = Table("id", "name", "prefix", "role", "revoked", "created")
    for key in _run_db(settings, work):
        table.add_row(
            key.id, key.name, key.key_prefix, key.role, str(key.revoked), key.created_at.isoformat()
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id."""
    settings = _settings()

    async def work(session: AsyncSession) -> None:
        operator = keys_service.Principal("cli", "cli", "default", Role.ADMIN, True)
        await keys_service.revoke(session, SystemClock(), operator, key_id)

    _run_db(settings, work)
    console.print(f"revoked {key_id}")


@tenants_app.command("create")
def tenants_create(
    name: str,
    tier: Annotated[str, typer.Option(help="free, pro or business.")] = "free",
) -> None:
    """Create a tenant."""
    settings = _settings()
    if tier not in {"free", "pro", "business"}:
        errors.print("[red]error:[/red] --tier must be free, pro or business")
        raise typer.Exit(2)

    async def work(session: AsyncSession) -> str:
        tenant = await tenants_service.create_row(session, SystemClock(), name=name, tier=tier)
        return tenant.id

    console.print(f"created tenant {name!r}: {_run_db(settings, work)}")


@tenants_app.command("list")
def tenants_list() -> None:
    """List tenants."""
    settings = _settings()
    table = Table("id", "name", "tier", "handoffs/day", "max keys", "created")
    for tenant in _run_db(settings, tenants_service.list_all):
        table.add_row(
            tenant.id,
            tenant.name,
            tenant.tier,
            str(tenant.handoffs_per_day if tenant.handoffs_per_day is not None else "tier"),
            str(tenant.max_api_keys if tenant.max_api_keys is not None else "tier"),
            tenant.created_at.isoformat(),
        )
    console.print(table)


@tenants_app.command("set-tier")
def tenants_set_tier(tenant: str, tier: str) -> None:
    """Change a tenant's tier (by id or name)."""
    settings = _settings()
    if tier not in {"free", "pro", "business"}:
        errors.print("[red]error:[/red] tier must be free, pro or business")
        raise typer.Exit(2)
    _run_db(
        settings, lambda session: tenants_service.set_tier(session, SystemClock(), tenant, tier)
    )
    console.print(f"tenant {tenant} is now {tier}")


@app.command()
def doctor() -> None:
    """Check configuration, database, migrations and Redis; exit 1 when any check fails."""
    from handoffrail_server.cli.doctor import render, run_checks

    if not render(run_checks(), console):
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SettingsError as exc:
        errors.print(f"[red]configuration error:[/red] {exc}")
        sys.exit(2)
