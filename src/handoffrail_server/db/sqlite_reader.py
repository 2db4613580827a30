"""SQLite: small reads outside any transaction, answered on the event loop's own thread.

A read through aiosqlite is a hop to a pooled connection's thread and back: a queue hand-over,
a wake-up of the event loop through its self-pipe and the GIL passed back and forth, about
0.9 ms of process CPU in `bench.calls` (issue 10, round 11), for a key lookup that SQLite
answers from its page cache in microseconds. Such reads (`fast_sqlite.read_outside`: point
lookups by an indexed key, not part of a unit's transaction) go to a connection of the
engine's own that the event loop's thread calls directly.

It never makes the event loop wait: opened with a busy timeout of 0, a read that would wait for
a lock (another process holding the database in exclusive locking mode, a rollback-journal
writer, a WAL being recovered) fails at once and returns None, and the caller reads through a
pooled connection in its thread, which waits as every other statement does. In WAL mode (the
engine's) readers do not wait for writers, so that is the exception. `query_only`: it cannot
write, whatever it is handed. File databases only (an in-memory database is private to its
connection), opened without creating the file, and only for plain paths (a URL with options
keeps the pooled connections). `Engine.dispose()` closes it; the next read opens a new one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


class _Reader:
    """The engine's read connection (None: not opened, or closed by a dispose)."""

    __slots__ = ("connection", "uri")

    def __init__(self, uri: str | None) -> None:
        self.uri = uri  #: None: this engine's database cannot be read here
        self.connection: sqlite3.Connection | None = None

    def open(self) -> sqlite3.Connection | None:
        if self.connection is None and self.uri is not None:
            try:
                connection = sqlite3.connect(
                    self.uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False
                )
            except sqlite3.Error:  # no such file (yet): the pooled connections decide
                return None
            connection.execute("PRAGMA query_only = ON")
            self.connection = connection
        return self.connection

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()


_readers: weakref.WeakKeyDictionary[AsyncEngine, _Reader] = weakref.WeakKeyDictionary()


def _uri(engine: AsyncEngine) -> str | None:
    """`file:` URI of the engine's database opened read-write without creating it, or None."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.query or not url.database:
        return None
    if url.database == ":memory:" or url.database.startswith("file:"):
        return None
    return Path(url.database).absolute().as_uri() + "?mode=rw"


def _reader(engine: AsyncEngine) -> _Reader:
    reader = _readers.get(engine)
    if reader is None:
        reader = _readers[engine] = _Reader(_uri(engine))
        # the listener holds the reader, not the engine: the registry's key stays weak
        event.listen(engine.sync_engine, "engine_disposed", lambda _engine: reader.close())
    return reader


def read(engine: AsyncEngine, sql: str, parameters: tuple[Any, ...]) -> list[Any] | None:
    """The rows of `sql`, read on this thread from the latest commit; None when it must go
    through a pooled connection instead (not a file database, or the read would wait)."""
    reader = _reader(engine)
    connection = reader.open()
    if connection is None:
        return None
    try:
        return connection.execute(sql, parameters).fetchall()
    except sqlite3.OperationalError:  # busy or locked (or anything the pooled path must say)
        return None
    except sqlite3.Error:  # a broken connection: the next read opens a new one
        with contextlib.suppress(sqlite3.Error):
            reader.close()
        return None
