"""Migrated PostgreSQL databases for tests, emptied and reused instead of created per test.

`CREATE DATABASE` costs 0.1-0.3 s on these machines (its files are fsynced), and the PostgreSQL
half of the suite needed two per test (0.5 s of set-up each, ~4 minutes of CI). A test that asks
for a migrated database now takes one from this pool; afterwards its other sessions are
terminated, its schema is compared with the template's (tables, columns, indexes, constraints,
triggers, functions, sequences, the Alembic revision, database settings), and its tables are
emptied with `TRUNCATE … RESTART IDENTITY` and its sequences restarted. Anything a test changed
beyond rows — or any failure while checking — drops the database instead of reusing it, so
the next test always starts from what a fresh copy of the template would be.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

#: everything about a database's schema a test could change, as one digest
FINGERPRINT = """
SELECT md5(coalesce(string_agg(item, E'\\n' ORDER BY item), '')) FROM (
    SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' '
           || coalesce(column_default, '') || ' ' || is_nullable AS item
      FROM information_schema.columns WHERE table_schema = 'public'
    UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
    UNION ALL SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' '
           || pg_get_constraintdef(oid)
      FROM pg_constraint WHERE connamespace = 'public'::regnamespace
    UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT 'function ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc)
      FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
    UNION ALL SELECT 'sequence ' || sequencename FROM pg_sequences WHERE schemaname = 'public'
    UNION ALL SELECT 'relation ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    UNION ALL SELECT 'revision ' || version_num FROM alembic_version
    UNION ALL SELECT 'setting ' || array_to_string(setconfig, ';') FROM pg_db_role_setting
     WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
) AS schema_items
"""
TABLES = (
    "SELECT quote_ident(tablename) FROM pg_tables"
    " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
)
TERMINATE = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = $1 AND pid <> pg_backend_pid()"
)
SEQUENCES = (
    "SELECT quote_ident(sequencename), start_value FROM pg_sequences WHERE schemaname = 'public'"
)


class PgPool:
    """Databases copied from one migrated template, handed out one test at a time."""

    def __init__(self, admin_dsn: str, template: str) -> None:
        self.admin_dsn = admin_dsn
        self.template = template
        self._free: list[str] = []
        self._all: set[str] = set()
        self._fingerprint: str | None = None

    def dsn(self, database: str) -> str:
        return f"{self.admin_dsn.rsplit('/', 1)[0]}/{database}"

    def take(self) -> str:
        """A database at the template's state, for one test."""
        if self._free:
            return self._free.pop()
        name = f"hr_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(self._create(name))
        self._all.add(name)
        return name

    def give_back(self, name: str) -> None:
        """Empty `name` for the next test, or drop it if the test changed more than rows."""
        try:
            reusable = asyncio.run(self._reset(name))
        except (OSError, asyncpg.PostgresError, TimeoutError):
            reusable = False
        if reusable:
            self._free.append(name)
        else:
            self._all.discard(name)
            asyncio.run(self._drop(name))

    def close(self) -> None:
        """Drop every database of the pool."""
        for name in sorted(self._all):
            asyncio.run(self._drop(name))
        self._all.clear()
        self._free.clear()

    async def _as_admin(self, *statements: tuple[str, ...]) -> None:
        """Run `(sql, *arguments)` statements on one connection to the admin database."""
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            for sql, *arguments in statements:
                await admin.execute(sql, *arguments)
        finally:
            await admin.close()

    async def _create(self, name: str) -> None:
        # CREATE DATABASE ... TEMPLATE needs the template to have no other sessions
        await self._as_admin(
            (TERMINATE, self.template),
            (f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"',),
        )
        if self._fingerprint is None:
            connection = await asyncpg.connect(self.dsn(name))
            try:
                self._fingerprint = str(await connection.fetchval(FINGERPRINT))
            finally:
                await connection.close()

    async def _reset(self, name: str) -> bool:
        await self._as_admin((TERMINATE, name))
        connection = await asyncpg.connect(self.dsn(name))
        try:
            await connection.execute("SET lock_timeout = '10s'")
            if await connection.fetchval(FINGERPRINT) != self._fingerprint:
                return False
            tables = [row[0] for row in await connection.fetch(TABLES)]
            async with connection.transaction():
                if tables:
                    await connection.execute(
                        f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"
                    )
                for sequence, start in await connection.fetch(SEQUENCES):
                    await connection.execute(f"ALTER SEQUENCE {sequence} RESTART WITH {start}")
            return True
        finally:
            await connection.close()

    async def _drop(self, name: str) -> None:
        await self._as_admin((f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',))
