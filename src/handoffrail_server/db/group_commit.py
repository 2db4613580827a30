"""Group commit (PostgreSQL): lone writes of concurrent units of work share one transaction.

A create is one self-committing statement (`fast.connection(last=True)`): its unit of work
checks a connection out, sends the statement, PostgreSQL commits it, the connection goes back.
Under load most of that work is per statement, not per row: the checkout and return, the
round trip, the transaction and its commit record. Here a unit of work whose only write is
such a statement hands it over instead (`commit`); what the units of one event loop hand over
during one turn of the loop is sent as one pipelined batch (`executemany`, or `fetchmany` for
claim-next, whose rows name their statement's place in the batch: one round trip, one
implicit transaction, one commit), by a task of its own on a connection of its own, and each
unit learns the outcome of its own statement before its request is answered.

- **Atomic per unit, as before.** The batch is one transaction: all of it commits or none.
  When PostgreSQL refuses it (an error in one statement rolls back every one), each statement
  is run again on its own, so each unit gets exactly the outcome it would have had alone: its
  row, or its own error. A lost connection fails every unit of the batch (as it would have
  failed each alone) and is not retried: the commit may have happened.
- **Stream ids stay unique.** A stream event's id is the writing transaction's xid and the
  event's position in it (`realtime.repository`); a unit numbers its events from 0, so the
  batch renumbers them (`fast.Statement.positions`) one after another.
- **Only statements with the same text share a batch** (`executemany` runs one statement text
  for every argument list); a batch holds at most `MAX_BATCH` statements.
- **Connection slots** (`db.uow`): only a unit that holds no connection hands its write over,
  and it gives its slot back while it waits; a batch's sender takes a slot like a unit of
  work. While a sender waits for one, what later units hand over joins its batch, so batches
  grow with the load while the connections in use stay within the pool size.
- A unit cancelled before its batch is sent is left out of it; one cancelled after that may
  still have its row committed, as a cancelled lone statement may.

`HR_DB_GROUP_COMMIT=false` turns it off (every unit sends its own statement, as before).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from handoffrail_server.db import fast, uow
from handoffrail_server.observability import metrics

#: statements per batch. Smaller batches run side by side on several connections, so the
#: server's event loop and PostgreSQL's backends overlap; larger ones save round trips. In
#: alternating runs of the harness (create at 50 clients, claim-next by 32 workers) 16 beat
#: 64 by 13-30 % and 8 by 0-12 % (docs/performance.md, round 13).
MAX_BATCH = 16


@dataclass(slots=True)
class _Member:
    statement: fast.Statement
    done: asyncio.Future[list[Any]]
    #: may run beside another batch of its statement (see `_take`)
    beside: bool = True


@dataclass(slots=True)
class Stats:
    """What the groups of one engine did (tests and the benchmark read it)."""

    statements: int = 0  #: statements sent in a batch (alone or not)
    batches: int = 0  #: round trips that carried them
    retried: int = 0  #: statements run again alone after their batch was refused


@dataclass(slots=True)
class _Groups:
    engine: AsyncEngine
    loop: asyncio.AbstractEventLoop
    pending: dict[str, list[_Member]] = field(default_factory=dict)
    #: a sender is on its way (waiting for a slot or a connection) and will take `pending`
    waiting: bool = False
    #: senders whose batches are on their way to the database
    sending: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


_enabled: weakref.WeakKeyDictionary[AsyncEngine, Stats] = weakref.WeakKeyDictionary()
_groups: weakref.WeakKeyDictionary[AsyncEngine, _Groups] = weakref.WeakKeyDictionary()


def enable(engine: AsyncEngine) -> None:
    """Let units of work of `engine` (PostgreSQL) hand their lone writes over."""
    _enabled.setdefault(engine, Stats())


def stats(engine: AsyncEngine) -> Stats | None:
    """The engine's counters; None when group commit is off for it."""
    return _enabled.get(engine)


def takes(session: AsyncSession) -> bool:
    """Whether the unit of work may hand its last write over (`commit_last`): PostgreSQL,
    group commit on, nothing written yet and no connection held."""
    lean = fast.idle_unit(session)
    return lean is not None and lean.engine in _enabled


async def commit_last(
    session: AsyncSession, statement: fast.Statement, *, beside: bool = True
) -> list[Any]:
    """Run `statement` as the last write of a unit of work that `takes` says may hand it
    over; return its rows once it has committed, or raise its error (as SQLAlchemy's). The
    unit gives its connection slot back while it waits: it holds no connection. `beside`:
    see `commit`."""
    lean = fast.idle_unit(session)
    assert lean is not None, "see takes()"
    assert lean.engine in _enabled, "see takes()"
    lean.finished = True  # like `fast.connection(last=True)`: a later write is refused
    uow.release_slot()
    return await commit(lean.engine, statement, beside=beside)


async def commit(
    engine: AsyncEngine, statement: fast.Statement, *, beside: bool = True
) -> list[Any]:
    """Run `statement` in the next batch of `engine` and return its rows once it has
    committed (none unless it selects `fast.MEMBER_COLUMN`: `Statement.member`); its error
    (as SQLAlchemy's) if it could not. `beside=False`: the statement contends with others
    of its text (claim-next's `SKIP LOCKED` on one queue), so a batch of it is not split to
    run beside another (`_take`)."""
    loop = asyncio.get_running_loop()
    groups = _groups.get(engine)
    if groups is None or groups.loop is not loop:
        groups = _groups[engine] = _Groups(engine, loop)
    member = _Member(statement, loop.create_future(), beside)
    groups.pending.setdefault(statement.sql, []).append(member)
    if not groups.waiting:
        groups.waiting = True
        loop.call_soon(_start, groups)
    return await member.done


async def stop(engine: AsyncEngine) -> None:
    """At shutdown, once the requests ended: cancel the batches still on their way (their
    requests were cancelled; a statement cancelled here is cancelled in PostgreSQL when its
    connection is closed through the pool) and wait for their senders (the caller bounds it)."""
    groups = _groups.get(engine)
    tasks = set(groups.tasks) if groups is not None else set()
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)


def _start(groups: _Groups) -> None:
    """At the end of the loop's turn, a sender for what is handed over until it can send:
    while one waits for a connection slot, later statements join the batch it will send."""
    # a context of its own: not the request's whose unit happened to schedule it
    task = groups.loop.create_task(_send(groups), context=contextvars.Context())
    groups.tasks.add(task)  # a strong reference while it runs
    task.add_done_callback(groups.tasks.discard)


def _take(groups: _Groups) -> list[list[_Member]]:
    """Batches of at most `MAX_BATCH` statements in all, from what was handed over so far
    (cancelled units left out); what is left, and what comes later, goes to another sender,
    started at once when something is left (batches then run side by side). When no other
    sender's batch is on its way, at most half of what was handed over: the rest goes beside
    it on another connection, and the loop has the first half's answers to work on while the
    second is out (the lifecycle at 10 clients otherwise moved in lock-step, the loop idle a
    quarter of the time; docs/performance.md, round 14)."""
    batches: list[list[_Member]] = []
    room = MAX_BATCH
    if not groups.sending:
        # Nothing else is on its way: the event loop would wait idle for this one round trip.
        # Half of what was handed over goes now and the rest beside it, on another connection
        # (statements that contend with each other excepted: `commit(beside=False)`).
        handed = sum(member.beside for members in groups.pending.values() for member in members)
        if handed > 1:
            room = min(room, (handed + 1) // 2)
    for sql in list(groups.pending):
        members = [member for member in groups.pending[sql] if not member.done.done()]
        taken, left = members[:room], members[room:]
        if taken:
            batches.append(taken)
            room -= len(taken)
        if left:
            groups.pending[sql] = left
        else:
            del groups.pending[sql]
    groups.waiting = bool(groups.pending)
    if groups.waiting:
        groups.loop.call_soon(_start, groups)
    return batches


def renumbered(statements: Sequence[fast.Statement]) -> list[tuple[Any, ...]]:
    """Each statement's arguments, its stream positions moved past those of the ones before
    it (one transaction: `xid * 4096 + position` must differ for every event) and its
    `member` arguments set to its place in the batch."""
    argument_lists: list[tuple[Any, ...]] = []
    base = 0
    for place, statement in enumerate(statements):
        if not (statement.positions and base) and not (statement.member and place):
            argument_lists.append(statement.args)
        else:
            args = list(statement.args)
            for index in statement.positions:
                args[index] += base
            for index in statement.member:
                args[index] = place
            argument_lists.append(tuple(args))
        base += len(statement.positions)
    return argument_lists


async def _send(groups: _Groups) -> None:
    engine = groups.engine
    counters = _enabled.get(engine) or Stats()
    batches: list[list[_Member]] | None = None
    try:
        async with uow.connection_slot(engine):
            connection = await engine.connect()
            try:
                batches = _take(groups)
                groups.sending += 1
                sync = connection.sync_connection
                assert sync is not None  # started by `engine.connect()`
                driver = sync.connection.driver_connection
                for index, batch in enumerate(batches):
                    counters.batches += 1
                    counters.statements += len(batch)
                    metrics.DB_GROUP_COMMIT_STATEMENTS.observe(len(batch))
                    if not await _run_batch(connection, driver, batch, counters):
                        rest = [member for later in batches[index + 1 :] for member in later]
                        _fail(rest, partial(fast.translate, ConnectionError("lost"), lost=True))
                        return
            finally:
                if batches is not None:
                    groups.sending -= 1
                await asyncio.shield(connection.close())
    except asyncio.CancelledError:
        for member in _members(batches if batches is not None else _take(groups)):
            member.done.cancel()
        raise
    except Exception as error:  # no slot or connection in time, the server is down: theirs
        members = _members(batches if batches is not None else _take(groups))
        _fail(members, partial(copy.copy, error))


def _members(batches: list[list[_Member]]) -> list[_Member]:
    return [member for batch in batches for member in batch]


async def _run_batch(
    connection: AsyncConnection,
    driver: asyncpg.Connection,
    batch: list[_Member],
    counters: Stats,
) -> bool:
    """Send one batch and settle its members; False when the connection was lost (it is
    invalidated, the members have their error)."""
    statements = [member.statement for member in batch]
    first = statements[0]
    rows: list[Any] = []
    try:
        if first.member:
            if len(batch) == 1:
                rows = await driver.fetch(first.sql, *first.args)
            else:
                rows = await driver.fetchmany(first.sql, renumbered(statements))
        elif len(batch) == 1:
            await driver.execute(first.sql, *first.args)
        else:
            await driver.executemany(first.sql, renumbered(statements))
    except Exception as error:  # every error is some member's outcome
        if isinstance(error, fast.LOST_CONNECTION) or driver.is_closed():
            await connection.invalidate()
            _fail(batch, partial(fast.translate, error, lost=True))
            return False
        if len(batch) == 1:  # its own error, as `fast.fetch` would raise it
            if not batch[0].done.done():
                from_server = isinstance(error, asyncpg.PostgresError)
                outcome = fast.translate(error, lost=False) if from_server else error
                batch[0].done.set_exception(outcome)
            return True
        # the whole batch rolled back: each statement again, alone, for its own outcome
        for member in batch:
            counters.retried += 1
            if not await _run_batch(connection, driver, [member], counters):
                return False
        return True
    theirs: list[list[Any]] = [[] for _ in batch]
    for row in rows:
        theirs[row[fast.MEMBER_COLUMN] if len(batch) > 1 else 0].append(row)
    for member, own in zip(batch, theirs, strict=True):
        if not member.done.done():
            member.done.set_result(own)
    return True


def _fail(members: Sequence[_Member], error: Callable[[], BaseException]) -> None:
    """Each unsettled member gets an exception of its own (one raised in several tasks would
    collect all their tracebacks)."""
    for member in members:
        if not member.done.done():
            member.done.set_exception(error())
