"""Core inserts of ORM-shaped rows: the hot paths skip the unit-of-work flush machinery.

`insert_rows(session, obj...)` writes transient ORM objects with one Core `INSERT` (executemany
for several), in the caller's transaction. The objects stay transient (not in the identity map):
callers use them as plain values afterwards, which the hot paths (create, history) do.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Insert, Table, insert, inspect
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db.base import Base


@cache
def _columns(model: type[Base]) -> tuple[tuple[str, str], ...]:
    """(attribute key, column key) of every writable mapped column of `model`."""
    mapper = inspect(model)
    pairs = []
    for attribute in mapper.column_attrs:
        column = attribute.columns[0]
        if column.computed is None:
            pairs.append((attribute.key, column.key))
    return tuple(pairs)


@cache
def _insert(model: type[Base]) -> Insert:
    table = model.__table__
    assert isinstance(table, Table)
    return insert(table)


def values(obj: Base) -> dict[str, Any]:
    """Column values of a transient object; unset (None) columns take their column default."""
    result: dict[str, Any] = {}
    for attribute, column in _columns(type(obj)):
        value = getattr(obj, attribute)
        if value is not None:
            result[column] = value
    return result


async def insert_rows(session: AsyncSession, *objects: Base) -> None:
    """INSERT `objects` (all of one model) in the session's transaction."""
    if not objects:
        return
    model = type(objects[0])
    rows = [values(obj) for obj in objects]
    if len(rows) == 1:
        await session.execute(_insert(model), rows[0])
        return
    # executemany needs the same keys in every row
    keys = {key for row in rows for key in row}
    await session.execute(_insert(model), [{key: row.get(key) for key in keys} for row in rows])
