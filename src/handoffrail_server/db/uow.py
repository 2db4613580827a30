"""Unit of work: one transaction per request or job; commit on success, roll back on error.

SQLite allows one writer at a time and every transaction here starts with `BEGIN IMMEDIATE`.
Without help, concurrent requests of one process would queue inside SQLite's busy handler,
which sleeps in growing steps (up to 100 ms) between retries: seconds of p99 latency under
load. Units of work of one process therefore queue first on an asyncio lock per engine (FIFO,
handed over the moment the holder commits); other processes on the same file still meet the
busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

_sqlite_writers: weakref.WeakKeyDictionary[
    AsyncEngine, tuple[asyncio.AbstractEventLoop, asyncio.Lock]
] = weakref.WeakKeyDictionary()


def _writer_lock(factory: async_sessionmaker[AsyncSession]) -> asyncio.Lock | None:
    bind = factory.kw.get("bind")
    if not isinstance(bind, AsyncEngine) or bind.dialect.name != "sqlite":
        return None
    loop = asyncio.get_running_loop()
    entry = _sqlite_writers.get(bind)
    if entry is None or entry[0] is not loop:
        entry = _sqlite_writers[bind] = (loop, asyncio.Lock())
    return entry[1]


@asynccontextmanager
async def unit_of_work(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """Yield a session inside a transaction; commit if the block succeeds."""
    lock = _writer_lock(factory)
    async with lock if lock is not None else contextlib.nullcontext(), factory() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()
