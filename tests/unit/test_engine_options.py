"""Engine options that hold for every engine, however it is built: parameters hidden from
messages, and `HR_DB_STATEMENT_CACHE_SIZE` for engines built without the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc, text

from handoffrail_server.db.engine import configured_statement_cache_size, create_engine

SECRET = "packet-summary-that-must-not-be-logged"


async def test_a_failed_statement_does_not_quote_its_parameters(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}")
    try:
        async with engine.connect() as connection:
            with pytest.raises(exc.OperationalError) as caught:
                await connection.execute(text("SELECT :x FROM no_such_table"), {"x": SECRET})
    finally:
        await engine.dispose()
    assert "no_such_table" in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 100), ("0", 0), ("250", 250), (" 0 ", 0), ("-1", 100), ("many", 100), ("²", 100)],
)
def test_statement_cache_size_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: int
) -> None:
    if value is None:
        monkeypatch.delenv("HR_DB_STATEMENT_CACHE_SIZE", raising=False)
    else:
        monkeypatch.setenv("HR_DB_STATEMENT_CACHE_SIZE", value)
    assert configured_statement_cache_size() == expected


async def test_an_engine_built_without_settings_follows_a_zero_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind PgBouncer in transaction mode one-shot commands (migrate, jobs, doctor) must not
    prepare statements either."""
    monkeypatch.setenv("HR_DB_STATEMENT_CACHE_SIZE", "0")
    engine = create_engine("postgresql+asyncpg://app@127.0.0.1:1/unused")
    try:
        assert engine.url.query["prepared_statement_cache_size"] == "0"
    finally:
        await engine.dispose()
    monkeypatch.delenv("HR_DB_STATEMENT_CACHE_SIZE")
    engine = create_engine("postgresql+asyncpg://app@127.0.0.1:1/unused")
    try:
        assert "prepared_statement_cache_size" not in engine.url.query
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("asked", "expected"),
    [((20, 30), (20, 30)), ((10, 10), (10, 10)), ((1, 0), (5, 10))],
)
async def test_a_sqlite_file_engine_keeps_the_pool_it_is_given_but_never_less_than_five_and_ten(
    tmp_path: Path, asked: tuple[int, int], expected: tuple[int, int]
) -> None:
    """Each SQLite connection is a thread: a pool smaller than the server's concurrency opened
    and closed one per request (it used to ignore `HR_DB_POOL_SIZE` and keep SQLAlchemy's 5)."""
    engine = create_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", pool_size=asked[0], max_overflow=asked[1]
    )
    try:
        pool: Any = engine.sync_engine.pool
        assert (pool.size(), pool._max_overflow) == expected
    finally:
        await engine.dispose()


async def test_an_in_memory_sqlite_engine_keeps_its_single_connection() -> None:
    engine = create_engine("sqlite+aiosqlite://", pool_size=20, max_overflow=30)
    try:
        assert type(engine.sync_engine.pool).__name__ == "StaticPool"
    finally:
        await engine.dispose()
