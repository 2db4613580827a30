"""Storage of packets, tags and events. Every state change is a compare-and-set on `row_version`.

Flushes, never commits: the request or job owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Select,
    and_,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db import fast, fast_sqlite, group_commit, uow
from handoffrail_server.db.models import Packet, PacketEvent, PacketTag, StreamEvent
from handoffrail_server.db.rows import replaced, transient
from handoffrail_server.packets import policy, recent
from handoffrail_server.realtime import repository as stream_log
from handoffrail_server.webhooks import repository as webhook_rows


@dataclass(frozen=True, slots=True)
class PacketFilter:
    """List filters; every one maps to an indexed column."""

    statuses: Sequence[str] = ()
    source_agent: str | None = None
    target_agent: str | None = None
    tags: Sequence[str] = ()
    priority: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(slots=True)
class Page:
    """Rows of one page plus the total count of matches."""

    rows: list[Packet]
    total: int
    has_more: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def filter_conditions(tenant_id: str, filters: PacketFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [Packet.tenant_id == tenant_id]
    if filters.statuses:
        conditions.append(Packet.status.in_(list(filters.statuses)))
    if filters.source_agent:
        conditions.append(Packet.source_agent_id == filters.source_agent)
    if filters.target_agent:
        conditions.append(Packet.target_agent_id == filters.target_agent)
    if filters.priority:
        conditions.append(Packet.priority == filters.priority)
    if filters.created_after:
        conditions.append(Packet.created_at >= filters.created_after)
    if filters.created_before:
        conditions.append(Packet.created_at <= filters.created_before)
    for tag in filters.tags:
        conditions.append(
            exists().where(
                PacketTag.tenant_id == tenant_id,
                PacketTag.tag == tag,
                PacketTag.packet_id == Packet.id,
            )
        )
    return conditions


#: every tag of a new packet in one INSERT whose text does not depend on how many there are
_PG_TAGS_SQL = (
    "INSERT INTO packet_tag (packet_id, tag, tenant_id) SELECT $1, unnest($2::text[]), $3"
)


@dataclass(frozen=True, slots=True)
class Change:
    """What one packet state change writes: the packet (when new), its history event, its stream
    event, and the webhook event (`webhook`) to fan out to the endpoints subscribed to it.

    `last`: the unit of work writes nothing after this change (`fast.connection(last=True)`)."""

    event: PacketEvent
    stream_event: StreamEvent
    created: Packet | None = None
    tags: Sequence[str] = ()
    webhook: webhook_rows.PacketWebhook | None = None
    last: bool = False


async def write_change(session: AsyncSession, change: Change) -> bool:
    """Write a change in the caller's transaction; True when the caller must still fan the
    webhook event out (never today: both backends write the outbox rows with the change).

    PostgreSQL: one statement (data-modifying CTEs: packet, tags, event, stream event, one
    outbox row per subscribed endpoint) instead of six round trips. A `last` change of a unit of
    work that has not written yet runs without BEGIN/COMMIT. SQLite: the same statements (the
    outbox rows as one INSERT … SELECT) one after another in one hop to the driver's thread;
    a `last` change of a unit that has not begun goes through the write queue
    (`db.sqlite_writer`).
    """
    if change.last and group_commit.takes(session):
        await group_commit.commit_last(session, _pg_statement(session, change))
    else:
        driver = await fast.connection(session, last=change.last)  # before numbering its events
        if driver is None:
            return await _write_change_sqlite(session, change)
        await fast.fetch(session, driver, _pg_statement(session, change))
    if change.last and change.created is not None:
        recent.stage(session, change.created)
    return False


def _pg_statement(session: AsyncSession, change: Change) -> fast.Statement:
    """The writes of `change` on PostgreSQL as one statement."""
    writes: list[fast.Statement] = []
    if change.created is not None:
        packet = change.created
        writes.append(fast.insert_statement([packet]))
        if change.tags:
            tags = list(dict.fromkeys(change.tags))
            writes.append(fast.Statement(_PG_TAGS_SQL, (packet.id, tags, packet.tenant_id)))
    writes.append(fast.insert_statement([change.event]))
    writes.append(stream_log.pg_insert(session, change.stream_event))
    if change.webhook is not None:
        writes.append(webhook_rows.pg_fan_out(change.event.tenant_id, change.webhook))
    return fast.together(writes, fast.Statement("SELECT 1"))


def _sqlite_writes(session: AsyncSession, change: Change) -> list[fast_sqlite.Statement]:
    """The statements of `change` on SQLite, in order."""
    writes: list[fast_sqlite.Statement] = []
    if change.created is not None:
        packet = change.created
        writes.append(fast_sqlite.insert_statement(session, [packet]))
        tag_rows = [
            transient(PacketTag, packet_id=packet.id, tag=tag, tenant_id=packet.tenant_id)
            for tag in dict.fromkeys(change.tags)
        ]
        if tag_rows:
            writes.append(fast_sqlite.insert_statement(session, tag_rows))
    writes.append(fast_sqlite.insert_statement(session, [change.event]))
    writes.append(stream_log.sqlite_insert(session, change.stream_event))
    if change.webhook is not None:
        writes.append(webhook_rows.sqlite_fan_out(session, change.event.tenant_id, change.webhook))
    return writes


async def _write_change_sqlite(session: AsyncSession, change: Change) -> bool:
    writes = _sqlite_writes(session, change)
    if change.last and await uow.commit_alone(session, writes):
        return False
    lite = await fast_sqlite.connection(session)
    assert lite is not None  # PostgreSQL or SQLite
    await fast_sqlite.run(lite, writes)
    return False


async def get(session: AsyncSession, tenant_id: str, packet_id: uuid.UUID) -> Packet | None:
    """The packet if it belongs to the tenant; always re-read from the database.

    On PostgreSQL a transient value (not in the identity map): packets change only through
    `compare_and_set`, never by assigning attributes."""
    driver = await fast.connection(session, begin=False)
    if driver is not None:
        columns = fast.select_list(Packet)
        sql = f"SELECT {columns} FROM packet WHERE id = $1 AND tenant_id = $2"  # noqa: S608  # nosec B608 - model identifiers, bound values
        async with fast.translated(session):
            record = await driver.fetchrow(sql, packet_id, tenant_id)
        return None if record is None else fast.to_model(Packet, record)
    # SQLite: one read, outside the unit's transaction (on the event loop's thread) when it
    # has not begun one, as PostgreSQL reads before its BEGIN: the compare-and-set that may
    # follow checks the row version, so a read before the writer's turn is as good
    parameters = fast_sqlite.bound(session, Packet, {"id": packet_id, "tenant_id": tenant_id})
    rows = await fast_sqlite.read_outside(session, _sqlite_get_sql(), parameters)
    return fast_sqlite.to_model(session, Packet, rows[0]) if rows else None


@cache
def _sqlite_get_sql() -> str:
    columns = fast.select_list(Packet)
    return f"SELECT {columns} FROM packet WHERE id = ? AND tenant_id = ?"  # noqa: S608  # nosec B608 - model identifiers, bound values


async def compare_and_set(
    session: AsyncSession,
    packet: Packet,
    values: dict[str, Any],
    *,
    allowed_statuses: Sequence[str] | None = None,
) -> Packet | None:
    """Apply `values` only if nobody changed the row since `packet` was read.

    Returns the updated row, or None when another writer got there first (the caller re-reads).
    """
    driver = await fast.connection(session)
    if driver is not None:
        return await _compare_and_set_pg(session, driver, packet, values, allowed_statuses)
    updated, _ = await _change_if_unchanged_sqlite(session, packet, values, [], allowed_statuses)
    return updated


def _sqlite_cas_statement(
    session: AsyncSession,
    packet: Packet,
    values: dict[str, Any],
    allowed_statuses: Sequence[str] | None,
) -> fast_sqlite.Statement:
    """`_cas_statement` on SQLite: values through their columns' bind processors."""
    columns = {fast.column_of(Packet, attribute)[0]: value for attribute, value in values.items()}
    assignments = ", ".join(f"{column} = ?" for column in columns)
    where = "id = ? AND row_version = ?"
    statuses = tuple(allowed_statuses or ())
    if allowed_statuses is not None:
        where += f" AND status IN ({', '.join('?' for _ in statuses) or 'NULL'})"
    key = fast_sqlite.bound(session, Packet, {"id": packet.id, "row_version": packet.row_version})
    arguments = (*fast_sqlite.bound(session, Packet, columns), *key, *statuses)
    returning = fast.select_list(Packet)
    sql = f"UPDATE packet SET {assignments}, row_version = row_version + 1 WHERE {where} RETURNING {returning}"  # noqa: S608, E501  # nosec B608 - model identifiers, bound values
    return fast_sqlite.Statement(sql, [arguments])


async def _change_if_unchanged_sqlite(
    session: AsyncSession,
    packet: Packet,
    values: dict[str, Any],
    writes: Sequence[fast_sqlite.Statement],
    allowed_statuses: Sequence[str] | None,
    *,
    last: bool = False,
) -> tuple[Packet | None, bool]:
    """The compare-and-set, then `writes` only if it won: through the write queue when it is
    the `last` write of a unit that has not begun a transaction (`uow.change_alone`), else in
    one hop to the connection's thread inside the unit's transaction (begun here if not)."""
    cas = _sqlite_cas_statement(session, packet, values, allowed_statuses)
    rows = await uow.change_alone(session, cas, writes) if last else None
    if rows is None:
        lite = await fast_sqlite.connection(session)
        assert lite is not None  # SQLite
        rows = await fast_sqlite.run_if_changed(lite, cas, writes)
    return (fast_sqlite.to_model(session, Packet, rows[0]) if rows else None), False


def applied(packet: Packet, values: dict[str, Any]) -> Packet:
    """The row `compare_and_set(packet, values)` leaves when it wins."""
    return replaced(packet, **values, row_version=packet.row_version + 1)


async def change_if_unchanged(
    session: AsyncSession,
    packet: Packet,
    values: dict[str, Any],
    change: Change,
    *,
    allowed_statuses: Sequence[str] | None = None,
    recent_row: bool = False,
    live_at: datetime | None = None,
) -> tuple[Packet | None, bool]:
    """`compare_and_set`, then, if it won, `write_change(change)`: (updated row or None, whether
    the caller must still fan the webhook event out).

    `recent_row`: `packet` came from `packets.recent`, so the row must also still have its
    `updated_at` and status (PostgreSQL; the cache is not used on SQLite), and a write that
    finds it changed counts as stale; `live_at`: and must not have expired by then.

    PostgreSQL: one statement, whose history, stream and outbox inserts select from the
    compare-and-set's RETURNING, so they happen exactly when it wins; a `last` change of a unit
    that has not written runs without BEGIN/COMMIT (a lost compare-and-set wrote nothing, and
    the unit may try again). `change` is built from `applied(packet, values)`."""
    assert change.created is None, "a compare-and-set changes an existing packet"
    # Only a unit that has not read the packet holds no connection: one working from a cached
    # row (`packets.recent`), whose write may then go to a group-commit batch.
    grouped = change.last and group_commit.takes(session)
    driver = None if grouped else await fast.connection(session, last=change.last)
    if driver is None and not grouped:
        lite_writes = _sqlite_writes(session, change)
        return await _change_if_unchanged_sqlite(
            session, packet, values, lite_writes, allowed_statuses, last=change.last
        )
    cas = _cas_statement(packet, values, allowed_statuses, recent_row=recent_row, live_at=live_at)
    writes = [
        cas,
        fast.insert_from([change.event], "w0"),
        stream_log.pg_insert(session, change.stream_event, "w0"),
    ]
    if change.webhook is not None:
        writes.append(webhook_rows.pg_fan_out(change.event.tenant_id, change.webhook, "w0"))
    if driver is None:
        rows = await group_commit.commit_last(session, fast.together(writes, member_query()))
    else:
        query = fast.Statement(f"SELECT {fast.select_list(Packet)} FROM w0")  # noqa: S608  # nosec B608 - model identifiers
        rows = await fast.fetch(session, driver, fast.together(writes, query))
    if not rows:
        fast.wrote_nothing(session)
        if recent_row:
            recent.stale()
        if driver is None:
            await uow.retake_slot()  # the caller reads the row next, on a connection of its own
        return None, False
    updated: Packet = fast.to_model(Packet, rows[0])
    if change.last:
        recent.stage(session, updated)
    return updated, False


def member_query() -> fast.Statement:
    """The final SELECT of a packet change in a group-commit batch (`w0`: the changed row):
    its rows name their statement's place in the batch (`fast.Statement.member`)."""
    sql = f"SELECT {fast.select_list(Packet)}, $1::int AS {fast.MEMBER_COLUMN} FROM w0"  # noqa: S608  # nosec B608 - model identifiers
    return fast.Statement(sql, (0,), member=(0,))


def _cas_statement(
    packet: Packet,
    values: dict[str, Any],
    allowed_statuses: Sequence[str] | None,
    *,
    recent_row: bool = False,
    live_at: datetime | None = None,
) -> fast.Statement:
    """`UPDATE packet … WHERE id, row_version (and status) match RETURNING <every column>`;
    `recent_row`: `updated_at` and the status too; `live_at`: and `expires_at` is later (or
    none)."""
    assignments: list[str] = []
    arguments: list[Any] = []
    for attribute, value in values.items():
        column, is_json = fast.column_of(Packet, attribute)
        arguments.append(fast.dump_json(value) if is_json and value is not None else value)
        assignments.append(f"{column} = ${len(arguments)}")
    arguments += [packet.id, packet.row_version]
    where = f"id = ${len(arguments) - 1} AND row_version = ${len(arguments)}"
    if allowed_statuses is not None:
        arguments.append(list(allowed_statuses))
        where += f" AND status = ANY(${len(arguments)}::varchar[])"
    if recent_row:  # the status the caller's plan was made from, and no change since
        arguments += [packet.updated_at, packet.status]
        where += f" AND updated_at = ${len(arguments) - 1} AND status = ${len(arguments)}"
    if live_at is not None:
        arguments.append(live_at)
        where += f" AND (expires_at IS NULL OR expires_at > ${len(arguments)})"
    columns = fast.select_list(Packet)
    changes = ", ".join(assignments)
    sql = f"UPDATE packet SET {changes}, row_version = row_version + 1 WHERE {where} RETURNING {columns}"  # noqa: S608, E501  # nosec B608 - model identifiers, bound values
    return fast.Statement(sql, tuple(arguments))


async def _compare_and_set_pg(
    session: AsyncSession,
    driver: Any,
    packet: Packet,
    values: dict[str, Any],
    allowed_statuses: Sequence[str] | None,
) -> Packet | None:
    statement = _cas_statement(packet, values, allowed_statuses)
    async with fast.translated(session):
        record = await driver.fetchrow(statement.sql, *statement.args)
    return None if record is None else fast.to_model(Packet, record)


async def replace_tags(session: AsyncSession, packet: Packet, tags: Sequence[str]) -> None:
    """Make the tag rows of a packet equal `tags`."""
    await session.execute(delete(PacketTag).where(PacketTag.packet_id == packet.id))
    for tag in dict.fromkeys(tags):
        session.add(PacketTag(packet_id=packet.id, tag=tag, tenant_id=packet.tenant_id))
    await session.flush()


async def list_page(
    session: AsyncSession,
    tenant_id: str,
    filters: PacketFilter,
    *,
    limit: int,
    offset: int,
    cursor: tuple[datetime, uuid.UUID] | None,
    oldest_first: bool = False,
) -> Page:
    """A page of packets, newest first by (created_at, id), by offset or by keyset cursor."""
    conditions = filter_conditions(tenant_id, filters)
    total_query = select(func.count()).select_from(Packet).where(*conditions)
    total = int((await session.execute(total_query)).scalar_one())
    query: Select[Packet] = select(Packet).where(*conditions)
    if oldest_first:
        query = query.order_by(Packet.created_at.asc(), Packet.id.asc())
    else:
        query = query.order_by(Packet.created_at.desc(), Packet.id.desc())
    if cursor is not None:
        cursor_at, cursor_id = cursor
        query = query.where(
            or_(
                Packet.created_at < cursor_at,
                and_(Packet.created_at == cursor_at, Packet.id < cursor_id),
            )
        )
    else:
        query = query.offset(offset)
    rows = list((await session.execute(query.limit(limit + 1))).scalars())
    has_more = len(rows) > limit
    return Page(rows=rows[:limit], total=total, has_more=has_more)


async def search(
    session: AsyncSession,
    tenant_id: str,
    terms: Sequence[str],
    filters: PacketFilter,
    *,
    limit: int,
    offset: int,
) -> Page:
    """Full-text search ranked best first: FTS5 bm25 on SQLite, ts_rank on PostgreSQL."""
    if not terms:
        return Page(rows=[], total=0)
    conditions = filter_conditions(tenant_id, filters)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        tsquery = func.plainto_tsquery("simple", " ".join(terms))
        vector: ColumnElement[Any] = literal_column("packet.search_vector")
        match = vector.op("@@")(tsquery)
        rank = func.ts_rank(vector, tsquery).desc()
        base = select(Packet).where(match, *conditions)
        count = select(func.count()).select_from(Packet).where(match, *conditions)
    else:
        expression = policy.fts5_match(terms)
        ranked = (
            sql_text(
                "SELECT rowid AS rid, bm25(packet_fts) AS r FROM packet_fts "
                "WHERE packet_fts MATCH :match"
            )
            .bindparams(match=expression)
            .columns(rid=Integer, r=Float)
            .subquery("ranked")
        )
        rowid: ColumnElement[Any] = literal_column("packet.rowid")
        base = select(Packet).join(ranked, ranked.c.rid == rowid).where(*conditions)
        rank = ranked.c.r.asc()
        count = (
            select(func.count())
            .select_from(Packet)
            .join(ranked, ranked.c.rid == rowid)
            .where(*conditions)
        )
    total = int((await session.execute(count)).scalar_one())
    query = base.order_by(rank, Packet.created_at.desc()).limit(limit).offset(offset)
    rows = list((await session.execute(query)).scalars())
    return Page(rows=rows, total=total)


async def history(session: AsyncSession, tenant_id: str, packet_id: uuid.UUID) -> list[PacketEvent]:
    """Every event of a packet, oldest first."""
    result = await session.execute(
        select(PacketEvent)
        .where(PacketEvent.tenant_id == tenant_id, PacketEvent.packet_id == packet_id)
        .order_by(PacketEvent.created_at.asc(), PacketEvent.id.asc())
    )
    return list(result.scalars())


async def due_for_expiry(session: AsyncSession, now: datetime, limit: int) -> list[Packet]:
    """Packets whose deadline passed and that are not finished."""
    query = (
        select(Packet)
        .where(
            Packet.expires_at.is_not(None),
            Packet.expires_at <= now,
            Packet.status.in_(["created", "claimed", "in_progress", "awaiting_human"]),
        )
        .order_by(Packet.expires_at.asc())
        .limit(limit)
        .execution_options(populate_existing=True)
    )
    return list((await session.execute(query)).scalars())
