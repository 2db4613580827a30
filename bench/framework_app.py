"""The framework floor: FastAPI + the real request/response models, no database, no middleware.

`POST /api/v1/packets` validates the body as `PacketCreate` and answers 201 with a `PacketRead`
built from it, through FastAPI's response-model serialisation, exactly as the real route does.
Under the same server as the real app it shows what the web framework and pydantic alone cost per
create, so the table separates framework cost from storage and application cost.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import FastAPI

from handoffrail_server.packets.lifecycle import PacketStatus
from handoffrail_server.packets.schemas import PacketCreate, PacketRead

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.post("/api/v1/packets", status_code=201, response_model=PacketRead)
async def create(body: PacketCreate) -> PacketRead:
    """Validate, build the response model, serialise: the framework's share of a create."""
    document = body.model_dump(mode="json", exclude={"schema_id", "parent_packet_id"})
    now = datetime.now(UTC)
    return PacketRead(
        id=uuid.uuid4(),
        version="1.0.0",
        parent_packet_id=None,
        metadata=document["metadata"],
        context=document["context"],
        decisions=document["decisions"],
        actions=document["actions"],
        dependencies=document["dependencies"],
        hitl=document["hitl"],
        status=PacketStatus.CREATED,
        schema_id=None,
        created_at=now,
        updated_at=now,
    )


@app.get("/health")
async def health() -> dict[str, str]:
    """What the harness polls before measuring."""
    return {"status": "healthy"}
