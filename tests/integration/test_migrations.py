"""Alembic migrations: a clean round trip on both backends, one head, no model drift, and
concurrent `handoffrail migrate up` runs that queue on the PostgreSQL advisory lock."""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from handoffrail_server.db import migrations
from handoffrail_server.db.base import Base
from handoffrail_server.db.engine import create_engine
from handoffrail_server.db.models import __all__ as _models  # noqa: F401  (registers tables)

APP_TABLES = {"tenant", "api_key", "packet", "packet_tag", "packet_event", "packet_schema"}
CLI = Path(sys.executable).with_name("handoffrail")


def _on_connection(url: str, work: Callable[[Connection], Any]) -> Any:
    """Run `work` on a synchronous view of an async connection to `url`."""

    async def run() -> Any:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def table_names(url: str) -> set[str]:
    return set(_on_connection(url, lambda connection: inspect(connection).get_table_names()))


def packet_columns(url: str) -> set[str]:
    return {
        column["name"]
        for column in _on_connection(
            url, lambda connection: inspect(connection).get_columns("packet")
        )
    }


def recorded_revision(url: str) -> str | None:
    async def run() -> str | None:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            return await migrations.current_revision(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def env_include_object() -> Callable[..., bool]:
    """`_include_object` exactly as written in migrations/env.py (the module itself only runs
    inside Alembic, so the function is compiled on its own)."""
    source = (migrations.migrations_dir() / "env.py").read_text()
    tree = ast.parse(source)
    [function] = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "_include_object"
    ]
    namespace: dict[str, Any] = {}
    module = ast.Module(body=[function], type_ignores=[])
    exec(compile(module, "env.py", "exec"), namespace)  # noqa: S102  (our own migration script)
    include: Callable[..., bool] = namespace["_include_object"]
    return include


def cli_env(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HR_")}
    env.update(overrides)
    return env


def test_upgrade_downgrade_upgrade_round_trip_creates_and_removes_every_table(
    database_url: str,
) -> None:
    is_sqlite = database_url.startswith("sqlite")
    head = migrations.head_revision()

    migrations.upgrade(database_url)
    tables = table_names(database_url)
    assert tables >= APP_TABLES | {"alembic_version"}
    assert recorded_revision(database_url) == head
    if is_sqlite:
        assert "packet_fts" in tables
    else:
        assert "search_vector" in packet_columns(database_url)

    migrations.downgrade(database_url, "base")
    remaining = table_names(database_url)
    assert remaining & APP_TABLES == set()
    assert not any(name.startswith("packet_fts") for name in remaining)
    assert remaining <= {"alembic_version"}
    assert recorded_revision(database_url) is None

    migrations.upgrade(database_url)
    tables = table_names(database_url)
    assert tables >= APP_TABLES
    assert recorded_revision(database_url) == head
    if is_sqlite:
        assert "packet_fts" in tables
    else:
        assert "search_vector" in packet_columns(database_url)


def test_migration_scripts_have_exactly_one_head() -> None:
    script = ScriptDirectory.from_config(migrations.alembic_config("sqlite://"))
    heads = script.get_heads()
    assert len(heads) == 1
    assert heads[0] == migrations.head_revision()
    assert list(script.walk_revisions())[-1].down_revision is None


def test_models_match_the_migrated_schema_with_no_pending_autogenerate_diff(
    database_url: str,
) -> None:
    migrations.upgrade(database_url)
    include_object = env_include_object()

    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "include_object": include_object,
                "render_as_batch": connection.dialect.name == "sqlite",
            },
        )
        return list(compare_metadata(context, Base.metadata))

    assert _on_connection(database_url, diff) == []
    # ... and the same through Alembic's own `alembic check` (env.py, its filter and lock).
    command.check(migrations.alembic_config(database_url))


def test_the_include_filter_hides_only_hand_made_search_structures() -> None:
    include = env_include_object()
    assert not include(None, "packet_fts", "table", True, None)
    assert not include(None, "packet_fts_data", "table", True, None)
    assert not include(None, "search_vector", "column", True, None)
    assert not include(None, "ix_packet_search_vector", "index", True, None)
    assert include(None, "packet", "table", True, None)
    assert include(None, "search_text", "column", True, None)


@pytest.mark.postgres
@pytest.mark.slow
def test_three_concurrent_migrate_up_processes_all_succeed_and_leave_the_database_at_head(
    postgres_url: str,
) -> None:
    env = cli_env(HR_DATABASE_URL=postgres_url)
    processes = [
        subprocess.Popen(
            [str(CLI), "migrate", "up"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=90)
            outcomes.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    for returncode, stdout, stderr in outcomes:
        assert returncode == 0, stderr
        assert "database at head" in stdout
    assert recorded_revision(postgres_url) == migrations.head_revision()
    assert table_names(postgres_url) >= APP_TABLES
    assert "search_vector" in packet_columns(postgres_url)
