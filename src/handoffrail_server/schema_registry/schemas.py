"""Wire shapes of the schema registry (CONTRACT.md §5 Schema registry)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from handoffrail_server.api.wire import NoNulModel


class SchemaCreate(NoNulModel):
    """POST /schemas body."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=128)
    json_schema: dict[str, Any]
    version: int = Field(default=1, ge=1, le=1_000_000)

    @field_validator("json_schema")
    @classmethod
    def _has_type(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "type" not in value:
            raise ValueError("json_schema must have a 'type' key")
        return value


class SchemaRead(BaseModel):
    """A registered schema."""

    id: str
    name: str
    version: int
    json_schema: dict[str, Any]
    tenant_id: str
    created_at: datetime


class SchemaPage(BaseModel):
    """A page of schemas."""

    schemas: list[SchemaRead]
    total: int
    limit: int
    offset: int
