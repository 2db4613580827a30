"""Every ORM table, imported in one place for Alembic."""

from handoffrail_server.db.models.admin_audit import AdminAudit
from handoffrail_server.db.models.api_key import ApiKey
from handoffrail_server.db.models.packet import Packet, PacketTag
from handoffrail_server.db.models.packet_event import PacketEvent
from handoffrail_server.db.models.packet_schema import PacketSchema
from handoffrail_server.db.models.stream_event import StreamEvent
from handoffrail_server.db.models.tenant import Tenant
from handoffrail_server.db.models.usage import Agent, TenantUsage
from handoffrail_server.db.models.webhook import (
    JobRun,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = [
    "AdminAudit",
    "Agent",
    "ApiKey",
    "JobRun",
    "Packet",
    "PacketEvent",
    "PacketSchema",
    "PacketTag",
    "StreamEvent",
    "Tenant",
    "TenantUsage",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
