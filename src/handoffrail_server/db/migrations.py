"""Programmatic Alembic: upgrade, downgrade, current revision, and the at-head check."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def migrations_dir() -> Path:
    """Where the migration scripts live: bundled in the wheel, or the repository's folder."""
    for candidate in (_PACKAGE_DIR / "_migrations", _PACKAGE_DIR.parent.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("migration scripts not found (expected a migrations/ folder)")


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at our scripts and `database_url`."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    """The newest revision in the scripts."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_current_head()


def known_revisions() -> frozenset[str]:
    """Every revision the scripts of this code know."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(revision.revision for revision in script.walk_revisions())


class SchemaState(StrEnum):
    """Where a database stands against the code that wants to use it."""

    AT_HEAD = "at_head"
    BEHIND = "behind"  #: a revision of ours before the head, or never migrated
    AHEAD = "ahead"  #: a revision this code does not know: written by newer code


def schema_state(current: str | None, head: str | None, known: frozenset[str]) -> SchemaState:
    """AHEAD is what a rolling deploy or an application rollback sees after a newer release
    migrated (expand-then-contract keeps that schema usable by the previous release)."""
    if current == head:
        return SchemaState.AT_HEAD
    if current is None or current in known:
        return SchemaState.BEHIND
    return SchemaState.AHEAD


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (safe to run concurrently on PostgreSQL)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Revert migrations down to `revision` (e.g. "-1" or "base")."""
    command.downgrade(alembic_config(database_url), revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision recorded in the database, or None when it has never been migrated."""
    try:
        async with engine.connect() as connection:
            result = await connection.execute(text("SELECT version_num FROM alembic_version"))
            return result.scalar_one_or_none()
    except DBAPIError:
        return None
