"""Storage side of the claim queue: the candidates claim-next may take, oldest first by
priority, and (PostgreSQL) claim-next as one statement. Flushes, never commits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db import fast, fast_sqlite, group_commit
from handoffrail_server.db.models import Packet
from handoffrail_server.packets import recent
from handoffrail_server.packets.repository import (
    Change,
    PacketFilter,
    filter_conditions,
    member_query,
)
from handoffrail_server.realtime import repository as stream_log
from handoffrail_server.webhooks import repository as webhook_rows


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a claimer asks of the packet it takes (no filter: None / empty)."""

    target_agent: str | None
    tags: Sequence[str]
    priorities: Sequence[str] | None
    now: datetime
    limit: int = 1

    def pg_arguments(self) -> tuple[Any, ...]:
        """(target agent, priorities, now, tags) as `handoffrail_claim_candidates` takes them;
        as in `filter_conditions`, an empty filter is no filter."""
        priorities = list(self.priorities) if self.priorities is not None else None
        return (self.target_agent or None, priorities, self.now, list(self.tags))


def candidates_query(tenant_id: str, statuses: Sequence[str], wanted: Wanted) -> Select[Packet]:
    """Oldest highest-priority packets in `statuses` matching the filters (not locked)."""
    filters = PacketFilter(statuses=statuses, target_agent=wanted.target_agent, tags=wanted.tags)
    conditions = filter_conditions(tenant_id, filters)
    if wanted.priorities is not None:
        conditions.append(Packet.priority.in_(list(wanted.priorities)))
    conditions.append(or_(Packet.expires_at.is_(None), Packet.expires_at > wanted.now))
    return (
        select(Packet)
        .where(*conditions)
        .order_by(Packet.priority_rank.desc(), Packet.created_at.asc(), Packet.id.asc())
        .limit(wanted.limit)
        .execution_options(populate_existing=True)
    )


#: claim-next's candidates on PostgreSQL, one status: migration 0008's function (the claimable
#: index's order, planned with `enable_sort = off`), every filter a parameter (NULL / empty array
#: = no filter), so one prepared statement serves every call.
_PG_CANDIDATES_SQL = (
    "SELECT {columns} FROM handoffrail_claim_candidates($1, $2, $3, $4, $5, $6, $7)"
)


@cache
def pg_candidates_sql() -> str:
    """The PostgreSQL candidates statement (parameters: tenant, status, target agent or NULL,
    priorities or NULL, now, tags, limit)."""
    return _PG_CANDIDATES_SQL.format(columns=fast.select_list(Packet))


async def claim_candidates(
    session: AsyncSession, tenant_id: str, statuses: Sequence[str], wanted: Wanted
) -> list[Packet]:
    """Oldest highest-priority claimable packets (PostgreSQL skips rows locked by others).

    The claimable index has the candidates' ORDER BY, so its first unlocked row is the answer.
    When the statistics lag behind a fast-growing queue (autoanalyze has not run yet, "1 row"
    estimated), the planner prefers another index and sorts the whole queue on every claim
    (tens of ms at 10k+ rows). Sorting is never the better plan here, so it is switched off
    while the candidates are planned: by the function's `SET` clause (one round trip), or by
    `SET LOCAL` for the ORM query of several statuses."""
    driver = await fast.connection(session)
    if driver is None:
        return await _sqlite_candidates(session, tenant_id, statuses, wanted)
    if len(statuses) == 1:
        target, wanted_priorities, at, wanted_tags = wanted.pg_arguments()
        async with fast.translated(session):
            records = await driver.fetch(
                pg_candidates_sql(),
                tenant_id,
                statuses[0],
                target,
                wanted_priorities,
                at,
                wanted_tags,
                wanted.limit,
            )
        return [fast.to_model(Packet, record) for record in records]
    async with fast.translated(session):
        await driver.execute("SET LOCAL enable_sort = off")
    query = candidates_query(tenant_id, statuses, wanted).with_for_update(skip_locked=True)
    return list((await session.execute(query)).scalars())


async def _sqlite_candidates(
    session: AsyncSession, tenant_id: str, statuses: Sequence[str], wanted: Wanted
) -> list[Packet]:
    """`candidates_query` on SQLite as one raw read (no statement built per request), inside
    the unit's transaction, begun here: claimers contend for the same first rows, and a list
    read before the writer's turn would mostly be lost compare-and-sets."""
    (deadline,) = fast_sqlite.bound(session, Packet, {"expires_at": wanted.now})
    sql = [f"SELECT {fast.select_list(Packet)} FROM packet WHERE tenant_id = ?"]  # noqa: S608  # nosec B608 - model identifiers, bound values
    arguments: list[Any] = [tenant_id]
    sql.append(f"AND status IN ({', '.join('?' for _ in statuses) or 'NULL'})")
    arguments += statuses
    if wanted.target_agent:  # as in `filter_conditions`: an empty filter is no filter
        sql.append("AND target_agent_id = ?")
        arguments.append(wanted.target_agent)
    if wanted.priorities is not None:
        sql.append(f"AND priority IN ({', '.join('?' for _ in wanted.priorities) or 'NULL'})")
        arguments += wanted.priorities
    sql.append("AND (expires_at IS NULL OR expires_at > ?)")
    arguments.append(deadline)
    for tag in wanted.tags:
        sql.append(
            "AND EXISTS (SELECT 1 FROM packet_tag WHERE packet_tag.tenant_id = ?"
            " AND packet_tag.tag = ? AND packet_tag.packet_id = packet.id)"
        )
        arguments += [tenant_id, tag]
    sql.append("ORDER BY priority_rank DESC, created_at ASC, id ASC LIMIT ?")
    arguments.append(wanted.limit)
    lite = await fast_sqlite.connection(session)
    assert lite is not None  # SQLite
    with fast_sqlite.translating():
        rows = await lite.execute_fetchall(" ".join(sql), tuple(arguments))
    return [fast_sqlite.to_model(session, Packet, row) for row in rows]


@cache
def _pg_claim_first_sql() -> str:
    columns = fast.select_list(Packet)
    return (
        "UPDATE packet SET status = $1, metadata = metadata || $2::jsonb,"  # noqa: S608  # nosec B608 - model identifiers, bound values
        " target_agent_id = $3, claimed_by_agent_id = $3, claimed_at = $4, updated_at = $4,"
        " row_version = row_version + 1"
        " WHERE id = (SELECT id FROM handoffrail_claim_candidates($5, $6, $7, $8, $9, $10, 1))"
        f" AND status = $6 RETURNING {columns}"
    )


async def claim_first(
    session: AsyncSession,
    tenant_id: str,
    wanted: Wanted,
    *,
    agent_id: str,
    metadata: dict[str, Any],
    change: Change,
) -> Packet | None:
    """PostgreSQL: claim the first of `claim_candidates` (one status, `created`) for
    `agent_id` in one statement: the candidate locked (`SKIP LOCKED`), updated (`metadata`
    merged into its metadata), and `change`'s history, stream and outbox rows written from the
    row it picked — its id and metadata taken from that row, the rest from `change` (built for
    a placeholder packet). None when no packet is claimable (nothing written). A `last` change
    of a unit that has not written commits on its own, in a batch of other units' when it holds
    no connection (`db.group_commit`)."""
    grouped = change.last and group_commit.takes(session)
    driver = None
    if not grouped:
        driver = await fast.connection(session, last=change.last)
        assert driver is not None, "PostgreSQL only"
    claim = fast.Statement(
        _pg_claim_first_sql(),
        (
            "claimed",
            fast.dump_json(metadata),
            agent_id,
            wanted.now,
            tenant_id,
            "created",
            *wanted.pg_arguments(),
        ),
    )
    writes = [
        claim,
        fast.insert_from([change.event], "w0", {"packet_id": "id"}),
        stream_log.pg_insert_for_row(session, change.stream_event, "w0"),
    ]
    if change.webhook is not None:
        writes.append(webhook_rows.pg_fan_out_for_row(tenant_id, change.webhook, "w0"))
    statement = fast.together(writes, member_query())
    if driver is None:
        # not split across connections: batches side by side would skip each other's locked
        # candidates (measured: claim-next x32 -16 % with its batches split)
        rows = await group_commit.commit_last(session, statement, beside=False)
    else:
        rows = await fast.fetch(session, driver, statement)
    if not rows:
        fast.wrote_nothing(session)
        return None
    claimed: Packet = fast.to_model(Packet, rows[0])
    if change.last:
        recent.stage(session, claimed)
    return claimed
