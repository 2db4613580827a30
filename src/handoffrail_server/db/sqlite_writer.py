"""SQLite: a unit of work's single write, committed by a queue that writes back to back.

SQLite has one writer at a time, and each process's units of work take turns on an asyncio lock
(`db.uow`). A unit holding the turn used to make four hops to its connection's thread (BEGIN
IMMEDIATE, the key lookup, the change, COMMIT) while every other request waited on the lock and
the event loop sat idle between hops: a third of the time in `bench.calls` (issue 10, round 10).

A unit whose only write is one change (a single create, claim or PATCH: `repository.Change.last`)
does not take the turn. It hands its statements to this queue, which writes the units waiting
at that moment in one hop to one connection's thread — `BEGIN IMMEDIATE`, their statements,
`COMMIT` — while the event loop serves other requests. If one unit's rows fail (a constraint,
a value refused), the batch is rolled back and each unit runs again as a transaction of its
own: that one gets its own error, the others commit. A failure of the database itself (locked
by another process past the busy timeout, I/O, disk full) fails the whole batch at once rather
than waiting again for each unit. A unit's caller hears back only once its rows are committed.
The queue takes the same turn as units of work for each batch (and checks its connection out
of the pool before waiting for the turn, as units do), so queued and session writes never
meet in SQLite's busy handler.

A unit that queued its write has finished writing: `db.uow` refuses a transaction it would
begin afterwards (`fast.UnitFinished`), as on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from handoffrail_server.db import fast_sqlite


@dataclass(slots=True)
class _Job:
    statements: Sequence[fast_sqlite.Statement]
    future: asyncio.Future[list[Any]] = field(repr=False)
    #: the first statement is a compare-and-set (`UPDATE … RETURNING`): the others run only if
    #: it returned rows, and its rows are the job's answer
    conditional: bool = False


#: a job's outcome: its rows (a conditional job's compare-and-set; [] otherwise) or its error
_Outcome = list[Any] | Exception


def _run_job(connection: sqlite3.Connection, job: _Job) -> list[Any]:
    if not job.conditional:
        fast_sqlite.run_in_transaction(connection, job.statements)
        return []
    return fast_sqlite.run_if_changed_here(connection, job.statements[0], job.statements[1:])


def _commit_one(connection: sqlite3.Connection, job: _Job) -> _Outcome:
    try:
        fast_sqlite.begin_immediate_here(connection)
        rows = _run_job(connection, job)
        connection.execute("COMMIT")
    except Exception as error:  # this unit's failure is its own; the next one still runs
        if connection.in_transaction:
            connection.rollback()
        return error
    return rows


#: failures that one unit's rows cause (a constraint, a value SQLite or the driver refuses): the
#: batch is retried one unit at a time; any other failure is the database's and fails them all
_ONE_UNITS_FAULT = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    TypeError,
    ValueError,
    OverflowError,
)


def _commit_all(
    connection: sqlite3.Connection, jobs: Sequence[_Job]
) -> tuple[list[_Outcome], bool]:
    """In the connection's thread: the jobs as one transaction — (outcomes, True) — or, when one
    of them fails for its rows, each again as its own transaction, in order — (outcomes, False)
    — so that each commits or fails alone either way. One commit for the batch writes the
    pages its jobs share (the tables' last leaves, the indexes') to the WAL once instead of
    once per job."""
    if len(jobs) > 1:
        try:
            fast_sqlite.begin_immediate_here(connection)
            outcomes: list[_Outcome] = [_run_job(connection, job) for job in jobs]
            connection.execute("COMMIT")
        except _ONE_UNITS_FAULT:  # someone's rows: find whose, one transaction each
            if connection.in_transaction:
                connection.rollback()
        except Exception as error:  # the database's (locked past the busy timeout, I/O, full):
            if connection.in_transaction:  # every unit's, and trying each would wait again
                connection.rollback()
            return [error] * len(jobs), False
        else:
            return outcomes, True
    outcomes = [_commit_one(connection, job) for job in jobs]
    return outcomes, len(jobs) == 1 and not isinstance(outcomes[0], Exception)


class WriteQueue:
    """The queue of one engine in one event loop; `commit` is its only entry."""

    def __init__(self, engine: AsyncEngine, turn: asyncio.Lock) -> None:
        self._engine = weakref.ref(engine)  # the registry below is keyed weakly by the engine
        self._turn = turn
        self._waiting: list[_Job] = []
        self._drain: asyncio.Task[None] | None = None
        self.batches = 0  #: batches written (tests and benchmarks read it)
        self.together = 0  #: of which committed as one transaction (no job failed)

    async def commit(
        self, statements: Sequence[fast_sqlite.Statement], *, conditional: bool = False
    ) -> list[Any]:
        """Run `statements` as one transaction of their own; return once it committed.

        `conditional`: the first statement is a compare-and-set (`UPDATE … RETURNING`), the
        others run only if it returned rows; its rows are returned (none: nothing written).
        Cancelled while still waiting: never written. Cancelled once its batch started: it
        commits (or fails) with the batch, as a commit that finished after the client left."""
        job = _Job(statements, asyncio.get_running_loop().create_future(), conditional)
        self._waiting.append(job)
        if self._drain is None:
            self._drain = asyncio.create_task(self._run(), name="handoffrail-sqlite-writes")
        return await job.future

    async def _run(self) -> None:
        try:
            while self._waiting:
                await self._write_batch()
        finally:
            self._drain = None

    async def _write_batch(self) -> None:
        jobs, self._waiting = self._waiting, []
        try:
            engine = self._engine()
            if engine is None:
                raise RuntimeError("the engine of this write queue is gone")
            # the connection first, then the turn: whoever waits for the turn already has one
            raw = await engine.raw_connection()
            try:
                async with self._turn:
                    live = [job for job in jobs if not job.future.done()]
                    driver = raw.driver_connection
                    assert driver is not None
                    outcomes, together = await driver._execute(_commit_all, driver._conn, live)
                self._settle(live, outcomes, together)  # answered before the connection's return
            finally:
                await greenlet_spawn(raw.close)
        except Exception as error:  # no connection, or the trip itself failed: nothing written
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(_translated(error))
        except BaseException:
            for job in jobs:
                job.future.cancel()
            raise

    def _settle(self, jobs: list[_Job], outcomes: list[_Outcome], together: bool) -> None:
        self.batches += 1
        self.together += together
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.future.done():
                continue  # its waiter was cancelled while the batch ran
            if isinstance(outcome, Exception):
                job.future.set_exception(_translated(outcome))
            else:
                job.future.set_result(outcome)


def _translated(error: Exception) -> Exception:
    """sqlite3's errors as SQLAlchemy's (the problem handlers know those); others as they are."""
    try:
        with fast_sqlite.translating():
            raise error
    except Exception as translated:  # returned to the waiter, not swallowed
        return translated


_queues: weakref.WeakKeyDictionary[AsyncEngine, tuple[asyncio.AbstractEventLoop, WriteQueue]] = (
    weakref.WeakKeyDictionary()
)


def queue_for(engine: AsyncEngine, turn: asyncio.Lock) -> WriteQueue:
    """The engine's queue in the running event loop (tests run several loops in turn)."""
    loop = asyncio.get_running_loop()
    entry = _queues.get(engine)
    if entry is None or entry[0] is not loop:
        entry = _queues[engine] = (loop, WriteQueue(engine, turn))
    return entry[1]
