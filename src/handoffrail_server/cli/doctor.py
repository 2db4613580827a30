"""`handoffrail doctor`: every operational check as a pass/fail table; non-zero exit on failure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select, text

from handoffrail_server.db import migrations
from handoffrail_server.db.engine import create_engine
from handoffrail_server.db.models import ApiKey
from handoffrail_server.infra.redis import create_redis
from handoffrail_server.settings import (
    Settings,
    SettingsError,
    load_settings,
    redact_url,
)

TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    warning: bool = False


def _config_checks(settings: Settings) -> list[Check]:
    checks = [
        Check("configuration", True, f"environment {settings.environment.value}"),
        Check("database url", True, redact_url(settings.database_url)),
    ]
    if settings.is_development and settings.is_sqlite:
        checks.append(Check("database backend", True, "SQLite (development only)", True))
    return checks


async def _database_checks(settings: Settings) -> list[Check]:
    engine = create_engine(settings.database_url, pool_size=1, max_overflow=0)
    checks: list[Check] = []
    try:
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
        except Exception as exc:  # report the kind of failure, never credentials
            checks.append(Check("database reachable", False, type(exc).__name__))
            return checks
        checks.append(Check("database reachable", True, "SELECT 1 answered"))
        current = await migrations.current_revision(engine)
        head = migrations.head_revision()
        at_head = current == head
        detail = f"at {current}" if at_head else f"at {current or 'none'}, head is {head}"
        if not at_head:
            detail += " — run `handoffrail migrate up`"
        checks.append(Check("migrations at head", at_head, detail))
        if at_head:
            async with engine.connect() as connection:
                count = (
                    await connection.execute(select(func.count()).select_from(ApiKey))
                ).scalar_one()
            checks.append(
                Check(
                    "api keys",
                    True,
                    f"{count} key(s)" if count else "none yet — `handoffrail keys create`",
                    warning=not count,
                )
            )
    finally:
        await engine.dispose()
    return checks


async def _redis_check(settings: Settings) -> Check:
    client = create_redis(settings.redis_url)
    if client is None:
        return Check("redis", True, "not configured (in-memory fallbacks)", warning=True)
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await cast(Awaitable[bool], client.ping())
    except Exception as exc:  # report the kind of failure only
        return Check("redis", False, f"unreachable ({type(exc).__name__})")
    finally:
        await client.aclose()
    return Check("redis", True, "PING answered")


def run_checks() -> list[Check]:
    """Run every check; configuration errors end the list early."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        return [Check("configuration", False, str(exc))]

    async def gather() -> list[Check]:
        database = await _database_checks(settings)
        return [*database, await _redis_check(settings)]

    return [*_config_checks(settings), *asyncio.run(gather())]


def render(checks: list[Check], console: Console) -> bool:
    """Print the table; True when every check passed."""
    table = Table("check", "result", "detail")
    for check in checks:
        if not check.ok:
            result = "[red]FAIL[/red]"
        elif check.warning:
            result = "[yellow]WARN[/yellow]"
        else:
            result = "[green]PASS[/green]"
        table.add_row(check.name, result, check.detail)
    console.print(table)
    return all(check.ok for check in checks)
