"""Wire shapes of packets as handoffrail-sdk 0.3.0 sends and parses them (CONTRACT.md §3)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from handoffrail_server.api.wire import NoNulModel
from handoffrail_server.packets.lifecycle import PacketStatus


class Priority(StrEnum):
    """Packet priority."""

    LOW = "low"  #: whenever
    NORMAL = "normal"  #: default
    HIGH = "high"  #: before normal
    CRITICAL = "critical"  #: first


class ConversationRole(StrEnum):
    """Who said a conversation turn."""

    USER = "user"  #: end user
    AGENT = "agent"  #: an AI agent
    SYSTEM = "system"  #: system prompt or platform
    HUMAN = "human"  #: a human reviewer


class DependencyType(StrEnum):
    """What a packet waits on."""

    DATA = "data"  #: data to arrive
    API = "api"  #: an API call
    HUMAN_APPROVAL = "human_approval"  #: a person
    EXTERNAL_EVENT = "external_event"  #: something outside
    RESOURCE = "resource"  #: a resource to free up


class DependencyStatus(StrEnum):
    """Whether a dependency is met."""

    BLOCKED = "blocked"  #: not met
    AVAILABLE = "available"  #: met
    UNKNOWN = "unknown"  #: not known


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


#: agent ids and tags are stored in 256-character columns: longer ones are refused up front
AgentId = Annotated[str, Field(min_length=1, max_length=256)]
Tag = Annotated[str, Field(max_length=256)]


class AgentInfo(_Part):
    """The agent handing off."""

    id: AgentId
    name: str
    framework: str | None = None
    version: str | None = None


class TargetAgentInfo(_Part):
    """The agent receiving (replaced by the claimant on claim)."""

    id: AgentId
    name: str
    framework: str | None = None


class Metadata(_Part):
    """Who, when, how urgent, which tags."""

    source_agent: AgentInfo
    target_agent: TargetAgentInfo
    created_at: datetime | None = None
    claimed_at: datetime | None = None
    completed_at: datetime | None = None
    priority: Priority = Priority.NORMAL
    tags: list[Tag] = Field(default_factory=list, max_length=64)


class ContextEntry(_Part):
    """One conversation turn."""

    role: ConversationRole
    content: str
    timestamp: datetime | None = None
    metadata: dict[str, Any] | None = None


class Artifact(_Part):
    """A named piece of data carried along."""

    key: str
    value: str | dict[str, Any] | list[Any]
    content_type: str | None = None


class PacketContext(_Part):
    """What the receiving agent needs to continue."""

    summary: str
    conversation_state: list[ContextEntry] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    custom: dict[str, Any] = Field(default_factory=dict)


class Decision(_Part):
    """A decision taken so far."""

    id: str
    decision: str
    rationale: str
    alternatives: list[str] = Field(default_factory=list)
    decided_by: str | None = None
    timestamp: datetime | None = None


class PendingAction(_Part):
    """Work still to do."""

    id: str
    description: str
    assignee: str
    priority: Priority | None = None
    depends_on: list[str] = Field(default_factory=list)
    deadline: datetime | None = None


class CompletedAction(_Part):
    """Work done."""

    id: str
    description: str
    result: str
    completed_by: str | None = None
    completed_at: datetime | None = None


class FailedAction(_Part):
    """Work that failed."""

    id: str
    description: str
    error: str
    retries_remaining: int | None = None


class Actions(_Part):
    """Pending, completed and failed actions."""

    pending: list[PendingAction] = Field(default_factory=list)
    completed: list[CompletedAction] = Field(default_factory=list)
    failed: list[FailedAction] = Field(default_factory=list)


class Dependency(_Part):
    """Something the packet waits on."""

    id: str
    type: DependencyType
    description: str
    status: DependencyStatus = DependencyStatus.UNKNOWN
    source: str | None = None


class HitlCheckpoint(_Part):
    """A human-in-the-loop checkpoint."""

    required: bool = True
    reason: str
    question: str | None = None
    options: list[str] | None = None
    response: str | None = None
    responded_at: datetime | None = None
    responded_by: str | None = None
    notes: str | None = None
    timeout_seconds: int | None = Field(default=None, ge=1, le=31_536_000)
    #: what happens when the timeout passes (default: the tenant's `hitl_fallback`)
    fallback: Literal["fail", "expire", "escalate"] | None = None
    #: agent id that gets the packet on `escalate`
    escalate_to: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _reason_when_required(self) -> HitlCheckpoint:
        if self.required and not self.reason.strip():
            raise ValueError("hitl.reason must not be empty when hitl.required is true")
        return self


class ChainRequest(NoNulModel):
    """POST /packets/{id}/chain body (the SDK's ChainHandoffRequest)."""

    model_config = ConfigDict(extra="ignore")

    metadata: Metadata
    context: PacketContext
    decisions: list[Decision] = Field(default_factory=list)
    actions: Actions = Field(default_factory=Actions)
    dependencies: list[Dependency] = Field(default_factory=list)
    hitl: HitlCheckpoint | None = None
    schema_id: str | None = Field(default=None, max_length=64)


class PacketCreate(ChainRequest):
    """POST /packets body (the SDK's PacketCreate)."""

    parent_packet_id: uuid.UUID | None = None


class PacketUpdate(NoNulModel):
    """PATCH /packets/{id} body; every field optional (CONTRACT.md §5 merge rules)."""

    model_config = ConfigDict(extra="ignore")

    status: PacketStatus | None = None
    context: PacketContext | None = None
    decisions: list[Decision] | None = None
    actions: Actions | None = None
    dependencies: list[Dependency] | None = None
    hitl: HitlCheckpoint | None = None


class PacketClaim(NoNulModel):
    """POST /packets/{id}/claim body."""

    model_config = ConfigDict(extra="ignore")

    agent_id: str = Field(min_length=1, max_length=256)
    agent_name: str = Field(min_length=1, max_length=256)
    framework: str | None = Field(default=None, max_length=256)


class ClaimNext(PacketClaim):
    """POST /packets/claim-next body: who claims, and which packets qualify."""

    target_agent: str | None = Field(default=None, max_length=256)
    tags: list[Tag] = Field(default_factory=list, max_length=16)
    priority: Priority | None = None
    min_priority: Priority | None = None


class HitlRespond(NoNulModel):
    """POST /packets/{id}/respond body."""

    model_config = ConfigDict(extra="ignore")

    response: str = Field(min_length=1)
    responded_by: str = Field(min_length=1, max_length=256)
    notes: str | None = None


class BatchCreate(NoNulModel):
    """POST /packets/batch body: raw packet documents, validated one by one."""

    packets: list[dict[str, Any]] = Field(min_length=1)


class BatchClaim(NoNulModel):
    """POST /packets/batch/claim body."""

    packet_ids: list[uuid.UUID] = Field(min_length=1, max_length=50)
    agent_id: str = Field(min_length=1, max_length=256)
    agent_name: str = Field(min_length=1, max_length=256)
    framework: str | None = Field(default=None, max_length=256)


class BatchComplete(NoNulModel):
    """POST /packets/batch/complete body."""

    packet_ids: list[uuid.UUID] = Field(min_length=1, max_length=50)


class PacketRead(BaseModel):
    """A packet as the SDK's PacketResponse parses it."""

    id: uuid.UUID
    version: str
    parent_packet_id: uuid.UUID | None
    metadata: dict[str, Any]
    context: dict[str, Any]
    decisions: list[Any]
    actions: dict[str, Any]
    dependencies: list[Any]
    hitl: dict[str, Any] | None
    status: PacketStatus
    schema_id: str | None = None
    created_at: datetime
    updated_at: datetime


class PacketPage(BaseModel):
    """A page of packets."""

    packets: list[PacketRead]
    total: int
    limit: int
    offset: int
    next_cursor: str | None = None


class BatchCreateError(BaseModel):
    """Why one packet of a batch was not created."""

    index: int
    error: str


class BatchItemError(BaseModel):
    """Why one packet id of a batch was not processed."""

    packet_id: str
    error: str


class BatchCreated(BaseModel):
    """POST /packets/batch answer."""

    created: list[PacketRead]
    errors: list[BatchCreateError]


class BatchClaimed(BaseModel):
    """POST /packets/batch/claim answer."""

    claimed: list[PacketRead]
    errors: list[BatchItemError]


class BatchCompleted(BaseModel):
    """POST /packets/batch/complete answer."""

    completed: list[PacketRead]
    errors: list[BatchItemError]


class HistoryEvent(BaseModel):
    """One entry of a packet's history."""

    id: str
    packet_id: str
    event_type: str
    actor: str
    details: dict[str, Any] | None
    timestamp: datetime


class History(BaseModel):
    """GET /packets/{id}/history answer, oldest first."""

    packet_id: str
    events: list[HistoryEvent]
