"""The real sync `HandoffRailClient` (handoffrail-sdk 0.3.0) against a live server, both DBs:
the schema registry, API keys, tenants and authentication errors (packets: test_sdk_sync.py)."""

from __future__ import annotations

import uuid

import pytest
from handoffrail.sdk import (
    AuthenticationError,
    HandoffRailClient,
    NotFoundError,
    ServerError,
    ValidationError,
)

from tests.conftest import LiveServer
from tests.contract.sdk_support import (
    REFUND_SCHEMA,
    packet,
    sync_client,
    unique,
)


def test_schema_registry_create_list_and_get(client: HandoffRailClient) -> None:
    created = client.create_schema(name="refund", json_schema=REFUND_SCHEMA)
    assert (created.name, created.version) == ("refund", 1)
    assert created.json_schema == REFUND_SCHEMA
    assert created.tenant_id == "default"
    second = client.create_schema(name="refund", json_schema=REFUND_SCHEMA, version=2)

    listed = client.list_schemas()
    assert {s.id for s in listed.schemas} == {created.id, second.id}
    assert listed.total == 2
    assert client.list_schemas(limit=1, offset=1).limit == 1
    assert len(client.list_schemas(limit=1).schemas) == 1
    assert client.get_schema(created.id) == created
    with pytest.raises(NotFoundError):
        client.get_schema(str(uuid.uuid4()))


def test_packet_with_schema_id_is_validated_against_the_schema(client: HandoffRailClient) -> None:
    schema = client.create_schema(name="refund", json_schema=REFUND_SCHEMA)
    good = packet("Refund").model_copy(update={"schema_id": schema.id})
    good.context.custom = {"order_id": 42}
    created = client.create_packet(good)
    assert created.context.custom == {"order_id": 42}

    bad = packet("Refund").model_copy(update={"schema_id": schema.id})
    bad.context.custom = {"order_id": "forty-two"}
    with pytest.raises(ServerError) as caught:
        client.create_packet(bad)
    assert caught.value.status_code == 422
    assert client.list_packets().total == 1


def test_created_api_keys_work_with_their_role_and_are_listed_without_secrets(
    live_server: LiveServer, client: HandoffRailClient
) -> None:
    created = client.create_api_key(name="writer", role="writer")
    assert created.key is not None
    assert (created.key[:3], created.key_prefix) == ("hr_", created.key[:8])
    assert (created.role, created.revoked, created.tenant_id) == ("writer", False, "default")
    reader_key = client.create_api_key(name="reader", role="reader").key
    assert reader_key is not None

    listed = client.list_api_keys()
    assert len(listed) == 3
    assert [key.key for key in listed if key.id == created.id] == [None]
    with sync_client(live_server, created.key) as writer:
        made = writer.create_packet(packet("from writer"))
    with sync_client(live_server, reader_key) as reader:
        assert reader.get_packet(made.id).id == made.id
        with pytest.raises(ServerError) as caught:
            reader.create_packet(packet())
    assert caught.value.status_code == 403


def test_operator_manages_tenants_end_to_end(client: HandoffRailClient) -> None:
    name = unique("acme")
    tenant = client.create_tenant(name=name, tier="pro", handoffs_per_day=100, max_api_keys=3)
    assert (tenant.name, tenant.tier) == (name, "pro")
    assert (tenant.handoffs_per_day, tenant.max_api_keys) == (100, 3)
    assert tenant.deleted_at is None
    with pytest.raises(ValidationError) as duplicate:
        client.create_tenant(name=name)
    assert duplicate.value.status_code == 409
    assert tenant.id in {t.id for t in client.list_tenants()}
    assert client.get_tenant(tenant.id) == tenant

    renamed = client.update_tenant(tenant.id, name=name + "-renamed", tier="business")
    assert (renamed.name, renamed.tier) == (name + "-renamed", "business")
    assert renamed.handoffs_per_day == 100

    key = client.create_api_key(name="acme admin", tenant_id=tenant.id, role="admin")
    assert key.tenant_id == tenant.id
    tenant_keys = client.list_tenant_keys(tenant.id)
    assert [k.id for k in tenant_keys] == [key.id]
    assert tenant_keys[0].key is None

    client.delete_tenant(tenant.id)
    assert tenant.id not in {t.id for t in client.list_tenants()}
    with pytest.raises(NotFoundError):
        client.get_tenant(tenant.id)


def test_tenant_admin_sees_only_its_own_tenant(
    live_server: LiveServer, client: HandoffRailClient
) -> None:
    mine = client.create_tenant(name=unique("mine"), tier="business")
    other = client.create_tenant(name=unique("other"))
    admin_key = client.create_api_key(name="mine admin", tenant_id=mine.id).key
    assert admin_key is not None
    operator_packet = client.create_packet(packet("operator data"))

    with sync_client(live_server, admin_key) as admin:
        assert [t.id for t in admin.list_tenants()] == [mine.id]
        assert admin.get_tenant(mine.id).id == mine.id
        with pytest.raises(NotFoundError):
            admin.get_tenant(other.id)
        with pytest.raises(NotFoundError):
            admin.get_tenant("default")
        with pytest.raises(NotFoundError):
            admin.list_tenant_keys(other.id)
        assert {k.tenant_id for k in admin.list_api_keys()} == {mine.id}
        with pytest.raises(NotFoundError):
            admin.get_packet(operator_packet.id)
        assert admin.list_packets().total == 0
        own = admin.create_packet(packet("tenant data"))
        assert [p.id for p in admin.list_packets().packets] == [own.id]
    assert own.id not in {p.id for p in client.list_packets().packets}


def test_missing_or_invalid_api_key_raises_authentication_error(live_server: LiveServer) -> None:
    for key in ("", "hr_" + "x" * 43, "not-even-a-key"):
        with sync_client(live_server, key=key) as stranger:
            for call in (
                stranger.list_packets,
                lambda: stranger.create_packet(packet()),
                stranger.list_api_keys,
                stranger.list_tenants,
            ):
                with pytest.raises(AuthenticationError) as caught:
                    call()
                assert caught.value.status_code == 401
