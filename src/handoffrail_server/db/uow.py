"""Unit of work: one transaction per request or job; commit on success, roll back on error.

Units of work wait their turn in FIFO order, so that a burst beyond the connection pool does not
become a long latency tail:

- SQLite allows one writer at a time and every transaction here starts with `BEGIN IMMEDIATE`.
  Without help, concurrent requests of one process would queue inside SQLite's busy handler,
  which sleeps in growing steps (up to 100 ms) between retries: seconds of p99 latency under
  load. Units of work of one process therefore take turns on an asyncio lock per engine (FIFO,
  handed over the moment the holder commits); other processes on the same file still meet the
  busy timeout. A unit takes its turn when its session begins a transaction (the engine's
  `begin` event calls `take_turn`), not when it opens: what it does before its first statement
  does not hold other writers up, and a unit whose one write goes through the write queue
  (`commit_alone`, `db.sqlite_writer`) never takes one.
- PostgreSQL: SQLAlchemy's pool hands a returned connection to whichever task asks next, and a
  waiter that loses that race queues again at the back; and beyond `pool_size` every checkout
  opens an overflow connection that is closed again on return. With more requests in flight than
  connections, some waited many rounds and connections churned (create at 50 clients on a 10+10
  pool: p50 65 ms, p99 320-540 ms). Units of work first take a slot of a fair semaphore as large
  as `pool_size` (`limit_connections`, set by `db.engine.create_engine`; the overflow stays for
  readiness probes and other direct users), waiting at most the pool timeout (then the pool's
  own TimeoutError: a 503, as before). A unit of work opened inside another one in
  the same task does not take a second slot, so nesting cannot deadlock; tasks it spawns do.
  A unit that hands its last write to group commit (`db.group_commit`) holds no connection
  and gives its slot back at once (`release_slot`); the batch's sender takes one of its own
  (`connection_slot`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.util import await_

from handoffrail_server.db import fast, sqlite_writer

P = TypeVar("P", asyncio.Lock, asyncio.Semaphore)


class _PerLoop(Generic[P]):
    """One asyncio primitive per engine and event loop (tests run several loops in turn)."""

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[
            AsyncEngine, tuple[asyncio.AbstractEventLoop, P]
        ] = weakref.WeakKeyDictionary()

    def get(self, engine: AsyncEngine, make: Callable[[], P]) -> P:
        loop = asyncio.get_running_loop()
        entry = self._entries.get(engine)
        if entry is None or entry[0] is not loop:
            entry = self._entries[engine] = (loop, make())
        return entry[1]


@dataclass(frozen=True, slots=True)
class _Limit:
    connections: int
    timeout: float


@dataclass(slots=True)
class _Held:
    """A connection slot held by a task's unit of work."""

    task: asyncio.Task[object] | None
    semaphore: asyncio.Semaphore
    timeout: float
    released: bool = False  #: given back early (`release_slot`)


_sqlite_writers: _PerLoop[asyncio.Lock] = _PerLoop()
_gates: _PerLoop[asyncio.Semaphore] = _PerLoop()
_limits: weakref.WeakKeyDictionary[AsyncEngine, _Limit] = weakref.WeakKeyDictionary()
#: the slot the current task holds; tasks it spawns inherit the variable but are other tasks
_slot_holder: ContextVar[_Held | None] = ContextVar("handoffrail_uow_slot_holder", default=None)


def limit_connections(engine: AsyncEngine, connections: int, timeout: float) -> None:
    """Let at most `connections` units of work of this process use `engine` at once (FIFO)."""
    _limits[engine] = _Limit(connections, timeout)


def _writer_lock(bind: object) -> asyncio.Lock | None:
    if not isinstance(bind, AsyncEngine) or bind.dialect.name != "sqlite":
        return None
    return _sqlite_writers.get(bind, asyncio.Lock)


@dataclass(slots=True)
class _Turn:
    """A SQLite unit of work's place among the process's writers (see the module docstring)."""

    engine: AsyncEngine
    lock: asyncio.Lock
    task: asyncio.Task[object] | None
    held: bool = False
    finished: bool = False  #: its last write went through the write queue
    lost: bool = False  #: a compare-and-set it queued lost: it writes in a transaction now


_turn: ContextVar[_Turn | None] = ContextVar("handoffrail_uow_turn", default=None)


def _own_turn() -> _Turn | None:
    turn = _turn.get()
    if turn is None or turn.task is not asyncio.current_task():
        return None  # not in a unit of work, or in a task a unit spawned
    return turn


def take_turn() -> None:
    """From the SQLite engine's `begin` event (sync, in SQLAlchemy's greenlet): wait for the
    current unit of work's turn to write before its transaction begins."""
    turn = _own_turn()
    if turn is None or turn.held:
        return
    if turn.finished:
        raise fast.UnitFinished("a transaction after the unit's queued last write (rolled back)")
    await_(turn.lock.acquire())
    turn.held = True


async def commit_alone(session: AsyncSession, statements: Sequence[Any]) -> bool:
    """SQLite: commit `statements` (`fast_sqlite.Statement`s) as the unit of work's only write,
    through the write queue, when its session has not begun a transaction; False (nothing
    done) otherwise: the caller writes in the session's transaction."""
    turn = _own_turn()
    if turn is None or turn.held or turn.finished or session.in_transaction():
        return False
    turn.finished = True  # set first: nothing may begin while the write is under way
    await sqlite_writer.queue_for(turn.engine, turn.lock).commit(statements)
    return True


async def change_alone(
    session: AsyncSession, change: Any, writes: Sequence[Any]
) -> list[Any] | None:
    """SQLite: `commit_alone` for a compare-and-set (`change`, an `UPDATE … RETURNING`) and the
    `writes` that go with it when it wins: its rows (none: it lost, nothing was written, and
    the unit may write again), or None when the unit had begun a transaction or lost a queued
    compare-and-set before (nothing done: the caller writes in a transaction, where its
    retries read what they compare, in the writer's turn, and so cannot lose for ever against
    other queued writers of the same row)."""
    turn = _own_turn()
    if turn is None or turn.held or turn.finished or turn.lost or session.in_transaction():
        return None
    turn.finished = True  # set first: nothing may begin while the write is under way
    queue = sqlite_writer.queue_for(turn.engine, turn.lock)
    rows = await queue.commit([change, *writes], conditional=True)
    if not rows:
        turn.finished, turn.lost = False, True  # it lost: nothing was written
    return rows


def _gate(bind: object) -> tuple[asyncio.Semaphore, float] | None:
    if not isinstance(bind, AsyncEngine):
        return None
    holder = _slot_holder.get()
    if holder is not None and holder.task is asyncio.current_task():
        return None
    limit = _limits.get(bind)
    if limit is None:
        return None
    return _gates.get(bind, lambda: asyncio.Semaphore(limit.connections)), limit.timeout


def release_slot() -> None:
    """The current task's unit of work gives its connection slot back before it ends: it
    holds no connection and takes none any more (its write went to `db.group_commit`, whose
    batch takes a slot of its own)."""
    held = _slot_holder.get()
    if held is not None and held.task is asyncio.current_task() and not held.released:
        held.released = True
        held.semaphore.release()


async def retake_slot() -> None:
    """The current task's unit of work takes a connection slot again after `release_slot`:
    its write came back from `db.group_commit` having changed nothing (a compare-and-set that
    lost), and it reads and writes on a connection of its own next."""
    held = _slot_holder.get()
    if held is not None and held.task is asyncio.current_task() and held.released:
        await _acquire(held.semaphore, held.timeout)
        held.released = False


async def _acquire(semaphore: asyncio.Semaphore, wait: float) -> None:
    if not semaphore.locked():
        await semaphore.acquire()  # a slot is free and nobody waits: no suspension, no timer
        return
    try:
        async with asyncio.timeout(wait):
            await semaphore.acquire()
    except TimeoutError:
        raise sa_exc.TimeoutError(f"no database connection became free within {wait:g} s") from None


@asynccontextmanager
async def connection_slot(bind: object) -> AsyncIterator[None]:
    """One of the engine's connection slots, waiting its turn in arrival order (units of work,
    and group commit's batches); the pool's TimeoutError after its wait."""
    gate = _gate(bind)
    if gate is None:
        yield
        return
    semaphore, timeout = gate
    await _acquire(semaphore, timeout)
    held = _Held(asyncio.current_task(), semaphore, timeout)
    token = _slot_holder.set(held)
    try:
        yield
    finally:
        _slot_holder.reset(token)
        if not held.released:
            semaphore.release()


@asynccontextmanager
async def unit_of_work(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """Yield a session inside a transaction; commit if the block succeeds."""
    bind = factory.kw.get("bind")
    lock = _writer_lock(bind)
    if lock is not None:
        assert isinstance(bind, AsyncEngine)
        turn = _Turn(bind, lock, asyncio.current_task())
        token = _turn.set(turn)
        try:
            async with _in_session(factory) as session:
                yield session
        finally:
            _turn.reset(token)
            if turn.held:
                lock.release()
        return
    async with connection_slot(bind):
        if isinstance(bind, AsyncEngine) and bind.dialect.name == "postgresql":
            async with _on_one_connection(factory, bind) as session:
                yield session
            return
        async with _in_session(factory) as session:
            yield session


@asynccontextmanager
async def _in_session(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    session = factory()
    try:
        yield session
        await session.commit()
    except BaseException:
        await asyncio.shield(session.close())  # rolls back, returns the connection
        raise
    # Committed: the transaction has ended and handed its connection back to the pool, so
    # `close()` would only empty the identity map (a greenlet hop, ~4 % of a create's CPU);
    # the session is dropped instead.


@asynccontextmanager
async def _on_one_connection(
    factory: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> AsyncIterator[AsyncSession]:
    """PostgreSQL: raw statements (`db.fast`) check out the unit of work's own connection and
    bind the session to it; the unit commits that connection's driver transaction itself.

    A request that never touches the ORM so skips the session's transaction bookkeeping and
    its greenlet hops (about 0.15 ms of CPU per request: half of what a session-managed
    transaction costs). ORM use joins the same connection and transaction, and the session
    then commits it, as before. Nothing is checked out until the first statement (a request
    refused before it needs the database does not need a connection)."""
    session = factory()
    lean = fast.Lean(engine)
    session.info[fast.LEAN_KEY] = lean
    try:
        yield session
        if session.in_transaction() or session.new or session.deleted or session.dirty:
            if lean.finished:
                raise fast.UnitFinished("ORM work after the unit's last statement (rolled back)")
            await session.commit()  # the ORM was used: its transaction is the connection's
        await lean.commit()
    except BaseException:
        await asyncio.shield(_abandon(session, lean.connection))
        raise
    if lean.connection is not None:
        await lean.connection.close()  # back to the pool; nothing is left to roll back


async def _abandon(session: AsyncSession, connection: AsyncConnection | None) -> None:
    """Roll back whatever the block left and return the connection(s) to the pool."""
    try:
        await session.close()
    finally:
        if connection is not None:
            await connection.close()  # the pool's reset rolls back an open driver transaction
