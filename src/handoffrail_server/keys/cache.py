"""Per-process cache of resolved principals (PostgreSQL), kept right by LISTEN/NOTIFY.

Resolving the `X-API-Key` of a request is a database round trip: about a tenth of the CPU of a
packet create, more of a read. A process may skip it for a key it resolved moments ago, as long
as a revoke, a tier change or a deleted tenant is seen at once:

- Migration 0007 makes every statement that updates, deletes or truncates `api_key` or
  `tenant` notify the `handoffrail_principals` channel when its transaction commits, whoever
  ran it (a server, the CLI, hand-written SQL).
- `PrincipalListener` holds one connection per process (outside the pool) that LISTENs on it
  and clears the cache on every notice. The cache is used only while that connection is up:
  it is cleared and switched off when the connection is lost, and cleared again once it
  listens anew, so a notice missed meanwhile cannot leave a stale entry.
- A lookup that raced a notice is not stored: `generation()` is taken before the query and
  `put` drops the result if the cache was cleared meanwhile.
- The process's own key and tenant writes clear it right after their commit (a notice may
  reach the listener a moment after the writer has already answered its client).
- Entries also expire after `HR_AUTH_CACHE_SECONDS` (a safety net; 0 turns the cache off),
  and only keys that resolved to a principal are stored (a wrong key is looked up each time).

Not used on SQLite (no LISTEN) or behind PgBouncer in transaction mode
(`HR_DB_STATEMENT_CACHE_SIZE=0`: notices would not reach a pooled LISTEN).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from handoffrail_server.db.models import ApiKey, Tenant

log = structlog.get_logger("handoffrail.auth_cache")

CHANNEL = "handoffrail_principals"
#: session.info key: the unit of work changed a key or a tenant (cleared after its commit)
_CHANGED = "handoffrail.principals_changed"


class PrincipalCache:
    """Principals by key hash, usable only while `enabled` (see the module docstring)."""

    def __init__(
        self,
        ttl_seconds: float,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, Any]] = {}
        self._generation = 0
        self.enabled = False
        _caches.add(self)

    def get(self, key_hash: str) -> Any | None:
        """The cached principal of this key, or None."""
        if not self.enabled:
            return None
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._entries.pop(key_hash, None)
            return None
        return entry[1]

    def generation(self) -> int:
        """Take before looking a key up; hand to `put` with the result."""
        return self._generation

    def put(self, key_hash: str, principal: Any, generation: int) -> None:
        """Store a principal looked up since `generation` (dropped if cleared meanwhile)."""
        if not self.enabled or generation != self._generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # rare (that many live keys in one process): start over
        self._entries[key_hash] = (self._clock() + self.ttl, principal)

    def clear(self) -> None:
        """Forget every entry; lookups running now will not be stored."""
        self._generation += 1
        self._entries.clear()

    def enable(self) -> None:
        """Start using the cache (the listener listens)."""
        self.clear()
        self.enabled = True

    def disable(self) -> None:
        """Stop using the cache (the listener lost its connection)."""
        self.enabled = False
        self.clear()

    def __len__(self) -> int:
        return len(self._entries)


_caches: weakref.WeakSet[PrincipalCache] = weakref.WeakSet()


def clear_all() -> None:
    """Clear every cache of this process."""
    for cache in list(_caches):
        cache.clear()


@event.listens_for(Session, "after_flush")
def _note_principal_changes(session: Session, _context: Any) -> None:
    for obj in (*session.dirty, *session.deleted):
        if isinstance(obj, ApiKey | Tenant):
            session.info[_CHANGED] = True
            return


@event.listens_for(Session, "after_commit")
def _clear_after_own_commit(session: Session) -> None:
    if session.info.pop(_CHANGED, False):
        clear_all()


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, _previous: Any) -> None:
    session.info.pop(_CHANGED, None)


def connect_arguments(engine: AsyncEngine) -> dict[str, Any]:
    """asyncpg.connect() arguments for a connection of its own to `engine`'s database."""
    _args, options = engine.dialect.create_connect_args(engine.url)
    options = dict(options)
    for sqlalchemy_only in (
        "async_fallback",
        "async_creator_fn",
        "prepared_statement_cache_size",
        "prepared_statement_name_func",
    ):
        options.pop(sqlalchemy_only, None)
    options["statement_cache_size"] = 0
    for seconds in ("timeout", "command_timeout"):  # URL query values arrive as text
        if isinstance(options.get(seconds), str):
            options[seconds] = float(options[seconds])
    options.setdefault("timeout", 10.0)  # for connecting; the URL may set its own
    options["server_settings"] = {"application_name": "handoffrail-listener"}
    return options


class PrincipalListener:
    """LISTEN for principal changes on a connection of its own; reconnect with back-off."""

    def __init__(
        self,
        engine: AsyncEngine,
        cache: PrincipalCache,
        *,
        check_seconds: float = 15.0,
        max_backoff_seconds: float = 30.0,
    ) -> None:
        self.cache = cache
        self.check_seconds = check_seconds
        self.max_backoff = max_backoff_seconds
        self._arguments = connect_arguments(engine)
        self._task: asyncio.Task[None] | None = None
        self._listened = False
        self.connection: asyncpg.Connection | None = None

    def start(self) -> None:
        """Run in the background until `stop()`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="handoffrail-principal-listener")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.cache.disable()

    def _on_notice(self, *_args: object) -> None:
        self.cache.clear()

    async def _run(self) -> None:
        backoff = 0.25
        warned = False
        while True:
            self._listened = False
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._listened:
                    warned = False  # a working listener was lost: say so again
                if not warned:
                    log.warning("auth_cache.listener_lost", error=type(exc).__name__)
                warned = True
            if self._listened:
                backoff = 0.25
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _listen(self) -> None:
        lost = asyncio.Event()
        connection: asyncpg.Connection = await asyncpg.connect(**self._arguments)
        self.connection = connection
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(CHANNEL, self._on_notice)
            self.cache.enable()
            self._listened = True
            log.info("auth_cache.listening", ttl_seconds=self.cache.ttl)
            while not connection.is_closed():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.check_seconds):
                        await lost.wait()
                if lost.is_set():
                    raise ConnectionError("listener connection closed")
                # a connection cut without a FIN is only noticed by using it
                async with asyncio.timeout(self.check_seconds):
                    await connection.fetchval("SELECT 1")
        finally:
            self.cache.disable()
            self.connection = None
            connection.terminate()
