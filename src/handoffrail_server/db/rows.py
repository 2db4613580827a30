"""Core inserts of ORM-shaped rows: the hot paths skip the unit-of-work flush machinery.

`insert_rows(session, obj...)` writes transient ORM objects with one Core `INSERT` (executemany
for several), in the caller's transaction. The objects stay transient (not in the identity map):
callers use them as plain values afterwards, which the hot paths (create, history) do.

`transient(Model, **values)` builds such an object without the declarative constructor, whose
per-attribute set events cost more than the rest of building a row (three rows per create).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from typing import Any, TypeVar

from sqlalchemy import Insert, Table, insert, inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import class_mapper
from sqlalchemy.orm.base import instance_state

from handoffrail_server.db.base import Base

M = TypeVar("M", bound=Base)


@cache
def _attributes(model: type[Base]) -> frozenset[str]:
    return frozenset(attribute.key for attribute in class_mapper(model).column_attrs)


def transient(model: type[M], **values: Any) -> M:
    """A transient `model` object holding `values` (column attributes only), built without
    attribute events. Unset attributes read as None, as after `model(**values)`; added to a
    session, it inserts the same row."""
    unknown = values.keys() - _attributes(model)
    if unknown:
        raise TypeError(f"{model.__name__} has no column attribute {sorted(unknown)[0]!r}")
    obj: M = class_mapper(model).class_manager.new_instance()
    obj.__dict__.update(values)
    return obj


def _reader(obj: Base) -> Callable[[str], Any]:
    """Reads a column attribute of `obj`: from its `__dict__` while it has no database row
    (transient or pending: a missing attribute is None; the ORM's attribute descriptors cost
    more than the rest of building a row), through the ORM otherwise (it may be expired or
    deferred)."""
    if instance_state(obj).key is None:
        return obj.__dict__.get
    return partial(getattr, obj)


def replaced(obj: M, **changes: Any) -> M:
    """A transient copy of `obj` (every column attribute) with `changes` applied."""
    model = type(obj)
    read = _reader(obj)
    current = {key: read(key) for key in _attributes(model)}
    return transient(model, **{**current, **changes})


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
    read = _reader(obj)
    for attribute, column in _columns(type(obj)):
        value = read(attribute)
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
