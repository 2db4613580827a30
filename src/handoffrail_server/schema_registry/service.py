"""Schema registry use cases and context validation (`validation`: jsonschema, draft of the
`$schema`, 2020-12 by default). Remote `$ref`s are never fetched; regular expressions run in
bounded time."""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from typing import Any

from jsonschema.exceptions import SchemaError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.clock import Clock
from handoffrail_server.db.models import PacketSchema
from handoffrail_server.errors import Conflict, NotFound, Unprocessable
from handoffrail_server.schema_registry import repository, validation
from handoffrail_server.schema_registry.patterns import BudgetExceeded
from handoffrail_server.schema_registry.schemas import SchemaCreate, SchemaPage, SchemaRead


class SchemaNotFound(NotFound):
    """No such schema in the caller's tenant."""

    code = "schema.not_found"


class InvalidSchema(Unprocessable):
    """The JSON Schema itself is not valid, or cannot be used here (unresolvable `$ref`,
    unsupported regular expression)."""

    code = "schema.invalid"


class SchemaExists(Conflict):
    """This name and version are already registered."""

    code = "schema.exists"


class ContextMismatch(Unprocessable):
    """A packet context does not match its schema."""

    code = "schema.validation_failed"


class ValidationTooCostly(Unprocessable):
    """Matching the schema's regular expressions against this context takes too many steps."""

    code = "schema.validation_too_costly"


def to_read(schema: PacketSchema) -> SchemaRead:
    """Wire shape of a schema row."""
    return SchemaRead(
        id=schema.id,
        name=schema.name,
        version=schema.version,
        json_schema=schema.json_schema,
        tenant_id=schema.tenant_id,
        created_at=schema.created_at,
    )


async def create(
    session: AsyncSession, clock: Clock, tenant_id: str, body: SchemaCreate
) -> SchemaRead:
    """Register a schema after checking it is a valid JSON Schema."""
    try:
        validation.check(body.json_schema)
    except SchemaError as exc:
        raise InvalidSchema(f"json_schema is not a valid JSON Schema: {exc.message}") from None
    except validation.SchemaUnusable as exc:
        raise InvalidSchema(f"json_schema cannot be used: {exc}") from None
    if await repository.by_name_version(session, tenant_id, body.name, body.version):
        raise SchemaExists(f"Schema '{body.name}' version {body.version} already exists")
    row = PacketSchema(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        name=body.name,
        version=body.version,
        json_schema=body.json_schema,
        created_at=clock.now(),
    )
    try:
        async with session.begin_nested():
            await repository.add(session, row)
    except IntegrityError:
        raise SchemaExists(f"Schema '{body.name}' version {body.version} already exists") from None
    return to_read(row)


async def get(session: AsyncSession, tenant_id: str, schema_id: str) -> SchemaRead:
    """One schema of the tenant."""
    row = await repository.get(session, tenant_id, schema_id)
    if row is None:
        raise SchemaNotFound(f"Schema {schema_id} not found")
    return to_read(row)


async def page(session: AsyncSession, tenant_id: str, *, limit: int, offset: int) -> SchemaPage:
    """A page of the tenant's schemas."""
    rows, total = await repository.page(session, tenant_id, limit=limit, offset=offset)
    return SchemaPage(
        schemas=[to_read(row) for row in rows], total=total, limit=limit, offset=offset
    )


def shared_validation_budget() -> AbstractContextManager[None]:
    """All context validations inside this block (a batch) share one time budget."""
    return validation.request_budget()


async def validate_context(
    session: AsyncSession, tenant_id: str, schema_id: str, context: dict[str, Any]
) -> None:
    """Raise `ContextMismatch` (422) unless `context` matches the registered schema."""
    row = await repository.get(session, tenant_id, schema_id)
    if row is None:
        raise ContextMismatch(f"Schema {schema_id} not found", field="schema_id")
    label = f"schema '{row.name}' v{row.version}"
    try:
        error = validation.first_error(row.json_schema, context)
    except validation.SchemaUnusable as exc:  # stored before registration refused it
        raise InvalidSchema(f"{label} cannot be used: {exc}", field="schema_id") from None
    except BudgetExceeded:
        raise ValidationTooCostly(
            f"validating this context against {label} takes too long",
            field="context",
        ) from None
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        raise ContextMismatch(
            f"context does not match {label} at {where}: {error.message}",
            field="context",
        )
