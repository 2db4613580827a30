"""HTTP routes of the schema registry (CONTRACT.md §5 Schema registry)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from handoffrail_server.api.deps import Caller, Session, State
from handoffrail_server.schema_registry import service
from handoffrail_server.schema_registry.schemas import SchemaCreate, SchemaPage, SchemaRead

router = APIRouter(prefix="/schemas", tags=["schemas"])


@router.post("", status_code=201, response_model=SchemaRead)
async def create_schema(
    body: SchemaCreate, state: State, session: Session, caller: Caller
) -> SchemaRead:
    """Register a JSON Schema for packet contexts."""
    return await service.create(session, state.clock, caller.tenant_id, body)


@router.get("", response_model=SchemaPage)
async def list_schemas(
    session: Session,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> SchemaPage:
    """The tenant's schemas, newest first."""
    return await service.page(session, caller.tenant_id, limit=limit, offset=offset)


@router.get("/{schema_id}", response_model=SchemaRead)
async def get_schema(schema_id: str, session: Session, caller: Caller) -> SchemaRead:
    """One schema."""
    return await service.get(session, caller.tenant_id, schema_id)
