"""Rate limits, quotas and their headers over HTTP (`create_app` + ASGI), both backends."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from handoffrail_server.api.roles import Role
from handoffrail_server.clock import FrozenClock
from handoffrail_server.limits.service import seconds_until_utc_midnight
from tests.conftest import (
    REDIS_TEST_URL,
    Api,
    packet_body,
    require_redis,
)
from tests.contract.helpers import P, assert_problem
from tests.contract.limits_support import (
    KIB,
    Db,
    assert_rate_headers,
    create,
    metric,
    noon_today,
    patch_tenant,
    serve,
    usage,
)

# -- per-key and per-tenant request limits ------------------------------------------------------


async def test_requests_past_the_per_key_limit_get_429_with_retry_after(db: Db) -> None:
    async with serve(db, rate_limit_per_minute=5) as api:
        _, key = await api.new_tenant_admin()
        remaining = []
        for _ in range(5):
            response = await api.client.get(f"{P}/packets", headers=api.headers(key))
            assert response.status_code == 200
            remaining.append(assert_rate_headers(response, limit=5))
            assert response.headers["RateLimit-Policy"] == '"minute";q=5;w=60'
        assert remaining == [4, 3, 2, 1, 0]

        refused = await api.client.get(f"{P}/packets", headers=api.headers(key))
        body = assert_problem(refused, 429, "rate_limit.exceeded")
        assert body["field"] == "rate_limit"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert assert_rate_headers(refused, limit=5) == 0
        assert refused.headers["X-RateLimit-Tier"] == "business"


async def test_each_key_has_its_own_per_minute_budget(db: Db) -> None:
    async with serve(db, rate_limit_per_minute=3) as api:
        tenant_id, first = await api.new_tenant_admin()
        second = await api.new_key(Role.READER, tenant_id)
        for _ in range(3):
            assert (await api.client.get(f"{P}/packets", headers=api.headers(first))).is_success
        limited = await api.client.get(f"{P}/packets", headers=api.headers(first))
        assert limited.status_code == 429
        fresh = await api.client.get(f"{P}/packets", headers=api.headers(second))
        assert fresh.status_code == 200
        assert assert_rate_headers(fresh, limit=3) == 2


async def test_a_tenants_hourly_budget_is_shared_by_its_keys(db: Db) -> None:
    overrides = '{"pro": {"requests_per_hour": 3}}'
    async with serve(db, tier_quotas=overrides) as api:
        tenant_id, admin = await api.new_tenant_admin(tier="pro")
        reader = await api.new_key(Role.READER, tenant_id)
        statuses = []
        for key in (admin, reader, admin, reader):
            response = await api.client.get(f"{P}/packets", headers=api.headers(key))
            statuses.append(response.status_code)
            assert response.headers["RateLimit-Policy"] == '"hour";q=3;w=3600'
            assert response.headers["X-RateLimit-Tier"] == "pro"
        assert statuses == [200, 200, 200, 429]
        assert 1 <= int(response.headers["Retry-After"]) <= 3600
        _other_id, other = await api.new_tenant_admin(tier="pro")
        assert (await api.client.get(f"{P}/packets", headers=api.headers(other))).is_success


async def test_rate_limit_headers_are_on_every_authenticated_response(db: Db) -> None:
    async with serve(db) as api:
        _, admin = await api.new_tenant_admin(tier="free")
        responses = {
            "200 list": await api.client.get(f"{P}/packets", headers=api.headers(admin)),
            "201 create": await create(api, admin),
            "404 unknown": await api.client.get(
                f"{P}/packets/{uuid.uuid4()}", headers=api.headers(admin)
            ),
            "422 invalid": await api.client.post(
                f"{P}/packets", json={"context": {}}, headers=api.headers(admin)
            ),
            "403 max_api_keys": await api.client.post(
                f"{P}/keys", json={"name": "second", "role": "reader"}, headers=api.headers(admin)
            ),
            "403 max_agents": await create(api, admin, source="third-agent"),
            "413 too large": await create(api, admin, "x" * (65 * KIB)),
            "200 usage": await api.client.get(f"{P}/usage", headers=api.headers(admin)),
        }
        remaining = []
        for label, response in responses.items():
            assert str(response.status_code) == label.split()[0], (label, response.text)
            remaining.append(assert_rate_headers(response, limit=100))
            assert response.headers["X-RateLimit-Tier"] == "free"
        assert remaining == sorted(remaining, reverse=True), "every request counts"
        assert remaining[0] == 99


async def test_forbidden_role_responses_carry_the_headers_too(db: Db) -> None:
    async with serve(db) as api:
        tenant_id, _ = await api.new_tenant_admin()
        reader = await api.new_key(Role.READER, tenant_id)
        response = await create(api, reader)
        assert_problem(response, 403, "auth.insufficient_role")
        assert_rate_headers(response)


async def test_unauthenticated_paths_are_never_limited(db: Db) -> None:
    async with serve(db, rate_limit_per_minute=1, auth_failures_per_minute=1) as api:
        for _ in range(15):
            for path in ("/health", "/ready", "/metrics", "/openapi.json"):
                response = await api.client.get(path)
                assert response.status_code == 200, (path, response.text)
                assert "X-RateLimit-Limit" not in response.headers
                assert "Retry-After" not in response.headers


async def test_rate_limiting_can_be_switched_off(db: Db) -> None:
    async with serve(db, rate_limit_enabled=False, rate_limit_per_minute=1) as api:
        for _ in range(5):
            response = await api.client.get(f"{P}/packets", headers=api.headers())
            assert response.status_code == 200
            assert "X-RateLimit-Limit" not in response.headers


# -- key guessing -------------------------------------------------------------------------------


async def test_auth_failures_are_throttled_per_client_ip(db: Db) -> None:
    async with (
        serve(db, auth_failures_per_minute=3) as api,
        serve(db, auth_failures_per_minute=3) as fresh_app,
    ):
        garbage = ["hr_" + "A" * 43, "not-a-key", "hr_" + "B" * 43]
        for key in garbage:
            assert_problem(
                await api.client.get(f"{P}/packets", headers={"X-API-Key": key}),
                401,
                "auth.invalid_key",
            )
        throttled = await api.client.get(f"{P}/packets", headers={"X-API-Key": "hr_" + "C" * 43})
        body = assert_problem(throttled, 429, "rate_limit.exceeded")
        assert body["field"] == "rate_limit"
        assert 1 <= int(throttled.headers["Retry-After"]) <= 60
        missing = await api.client.get(f"{P}/packets")
        assert missing.status_code == 429, "a missing key is a failure too"

        _, valid = await api.new_tenant_admin()
        ok = await api.client.get(f"{P}/packets", headers=api.headers(valid))
        assert ok.status_code == 200, "a real tenant's valid key is unaffected"
        assert int(ok.headers["X-RateLimit-Remaining"]) > 0

        # Another client address behind the same app keeps its own budget.
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api.app, client=("10.9.8.7", 40000)),
            base_url="http://testserver",
        )
        async with other:
            response = await other.get(f"{P}/packets", headers={"X-API-Key": "garbage"})
            assert response.status_code == 401
        # Without shared Redis, another instance counts on its own.
        response = await fresh_app.client.get(f"{P}/packets", headers={"X-API-Key": "garbage"})
        assert response.status_code == 401


# -- two instances, one Redis -------------------------------------------------------------------


async def test_two_app_instances_on_one_redis_share_one_budget(db: Db) -> None:
    require_redis()
    shared: dict[str, Any] = {
        "redis_url": REDIS_TEST_URL,
        "redis_prefix": f"hrtest-{uuid.uuid4().hex[:12]}",
        "rate_limit_per_minute": 4,
        "auth_failures_per_minute": 2,
    }
    async with serve(db, **shared) as first, serve(db, **shared) as second:
        for instance in (first, second):
            assert (await instance.client.get("/ready")).json()["rate_limit"] == "redis"
        _, key = await first.new_tenant_admin()
        answers = []
        for instance in (first, second, first, second, first, second):
            response = await instance.client.get(f"{P}/packets", headers=instance.headers(key))
            answers.append((response.status_code, response.headers["X-RateLimit-Remaining"]))
        assert answers == [
            (200, "3"),
            (200, "2"),
            (200, "1"),
            (200, "0"),
            (429, "0"),
            (429, "0"),
        ]
        for instance in (first, second):
            response = await instance.client.get(f"{P}/packets", headers={"X-API-Key": "bad"})
            assert response.status_code == 401
        response = await first.client.get(f"{P}/packets", headers={"X-API-Key": "bad"})
        assert response.status_code == 429, "auth failures are counted across instances too"

    alone = {**shared, "redis_prefix": f"hrtest-{uuid.uuid4().hex[:12]}"}
    async with serve(db, **alone) as third:
        response = await third.client.get(f"{P}/packets", headers=third.headers(key))
        assert response.status_code == 200, "another prefix is another budget"


# -- the daily handoff quota --------------------------------------------------------------------


async def test_sixth_create_of_the_day_is_refused_until_utc_midnight(
    quota_api: tuple[Api, FrozenClock],
) -> None:
    api, clock = quota_api
    _, key = await api.new_tenant_admin(tier="free")
    for index in range(5):
        assert (await create(api, key, f"handoff {index}")).status_code == 201
    refused = await create(api, key, "one too many")
    body = assert_problem(refused, 429, "quota.handoffs_per_day")
    assert body["detail"] == "Daily handoff limit reached for your tier"
    assert (body["limit"], body["tier"]) == (5, "free")
    assert int(refused.headers["Retry-After"]) == seconds_until_utc_midnight(clock.now()) == 43200
    assert_rate_headers(refused)

    clock.advance(43200 - 1)
    still = await create(api, key, "23:59:59")
    assert int(still.headers["Retry-After"]) == 1
    clock.advance(1)
    assert (await create(api, key, "a new UTC day")).status_code == 201
    assert (await usage(api, key))["usage"]["handoffs_today"] == 1


async def test_batch_create_counts_every_packet(quota_api: tuple[Api, FrozenClock]) -> None:
    api, _ = quota_api
    _, key = await api.new_tenant_admin(tier="free")
    batch = {"packets": [packet_body(f"batch {index}") for index in range(7)]}
    response = await api.client.post(f"{P}/packets/batch", json=batch, headers=api.headers(key))
    assert response.status_code == 201, response.text
    result = response.json()
    assert len(result["created"]) == 5
    assert [error["index"] for error in result["errors"]] == [5, 6]
    assert all("Daily handoff limit" in error["error"] for error in result["errors"])
    assert (await usage(api, key))["usage"]["handoffs_today"] == 5
    assert (await create(api, key)).status_code == 429
    # with the quota spent before it starts, the whole batch is the 429 the SDK maps to
    # RateLimitError(retry_after): not a 201 that created nothing
    spent = await api.client.post(f"{P}/packets/batch", json=batch, headers=api.headers(key))
    body = assert_problem(spent, 429, "quota.handoffs_per_day")
    assert body["detail"] == "Daily handoff limit reached for your tier"
    assert int(spent.headers["Retry-After"]) > 0
    assert (await usage(api, key))["usage"]["handoffs_today"] == 5


async def test_chained_handoffs_count_against_the_quota(
    quota_api: tuple[Api, FrozenClock],
) -> None:
    api, _ = quota_api
    _, key = await api.new_tenant_admin(tier="free")
    parent = (await create(api, key, "parent")).json()
    for _ in range(3):
        assert (await create(api, key)).status_code == 201
    chain = f"{P}/packets/{parent['id']}/chain"
    assert (await api.client.post(chain, json=packet_body(), headers=api.headers(key))).is_success
    refused = await api.client.post(chain, json=packet_body(), headers=api.headers(key))
    assert_problem(refused, 429, "quota.handoffs_per_day")
    assert "Retry-After" in refused.headers


async def test_refused_packets_do_not_consume_the_quota(
    quota_api: tuple[Api, FrozenClock],
) -> None:
    api, _ = quota_api
    _, key = await api.new_tenant_admin(tier="free")
    bads: list[dict[str, Any]] = [{"context": {}}, {"metadata": {}, "context": {"summary": "x"}}]
    for bad in bads:
        response = await api.client.post(f"{P}/packets", json=bad, headers=api.headers(key))
        assert_problem(response, 422)
    batch = {"packets": [{"context": {}}, {"nonsense": True}]}
    response = await api.client.post(f"{P}/packets/batch", json=batch, headers=api.headers(key))
    assert response.json()["created"] == []
    assert (await create(api, key, "x" * (65 * KIB))).status_code == 413
    assert (await create(api, key, source="a", target="b")).status_code == 201  # registers a, b
    assert (await create(api, key, source="c")).status_code == 403  # third agent
    assert (await usage(api, key))["usage"]["handoffs_today"] == 1
    for _ in range(4):
        assert (await create(api, key, source="a", target="b")).status_code == 201
    assert (await create(api, key, source="a", target="b")).status_code == 429


async def test_unlimited_tiers_have_no_daily_quota(quota_api: tuple[Api, FrozenClock]) -> None:
    api, _ = quota_api
    _, key = await api.new_tenant_admin(tier="pro")
    batch = {"packets": [packet_body(f"pro {index}") for index in range(12)]}
    response = await api.client.post(f"{P}/packets/batch", json=batch, headers=api.headers(key))
    assert (len(response.json()["created"]), response.json()["errors"]) == (12, [])
    report = await usage(api, key)
    assert (report["limits"]["handoffs_per_day"], report["usage"]["handoffs_today"]) == (None, 12)


# -- count quotas and packet size ---------------------------------------------------------------


async def test_second_api_key_on_a_free_tenant_is_refused(db: Db) -> None:
    async with serve(db) as api:
        tenant_id, admin = await api.new_tenant_admin(tier="free")
        new_key = {"name": "second", "role": "reader"}
        own = await api.client.post(f"{P}/keys", json=new_key, headers=api.headers(admin))
        body = assert_problem(own, 403, "quota.max_api_keys")
        assert (body["limit"], body["tier"], body["quota"]) == (1, "free", "max_api_keys")
        by_operator = await api.client.post(
            f"{P}/keys", json={**new_key, "tenant_id": tenant_id}, headers=api.headers()
        )
        assert_problem(by_operator, 403, "quota.max_api_keys")

        await patch_tenant(api, tenant_id, max_api_keys=2)
        assert (
            await api.client.post(f"{P}/keys", json=new_key, headers=api.headers(admin))
        ).status_code == 201
        third = await api.client.post(f"{P}/keys", json=new_key, headers=api.headers(admin))
        assert assert_problem(third, 403, "quota.max_api_keys")["limit"] == 2


@pytest.mark.parametrize("path", ["claim", "claim-next"])
async def test_a_claim_by_an_agent_past_the_cap_changes_nothing(db: Db, path: str) -> None:
    async with serve(db) as api:
        _, key = await api.new_tenant_admin(tier="free")
        created = await create(api, key, source="sales-01", target="billing-01")
        packet_id = created.json()["id"]
        claimant = {"agent_id": "third-01", "agent_name": "Third"}
        url = f"{P}/packets/{packet_id}/claim" if path == "claim" else f"{P}/packets/claim-next"
        refused = await api.client.post(url, json=claimant, headers=api.headers(key))
        assert_problem(refused, 403, "quota.max_agents")
        packet = await api.client.get(f"{P}/packets/{packet_id}", headers=api.headers(key))
        assert packet.json()["status"] == "created"  # no claim without its history
        history = await api.client.get(f"{P}/packets/{packet_id}/history", headers=api.headers(key))
        assert [event["event_type"] for event in history.json()["events"]] == ["created"]


async def test_a_third_distinct_agent_on_the_free_tier_is_refused(db: Db) -> None:
    async with serve(db) as api:
        _, key = await api.new_tenant_admin(tier="free")
        assert (await create(api, key, source="sales-01", target="billing-01")).is_success
        refused = await create(api, key, source="sales-01", target="support-01")
        body = assert_problem(refused, 403, "quota.max_agents")
        assert (body["limit"], body["tier"]) == (2, "free")
        assert (await create(api, key, source="billing-01", target="sales-01")).is_success

        listing = await api.client.get(f"{P}/agents", headers=api.headers(key))
        assert listing.status_code == 200
        agents = listing.json()
        assert agents["total"] == 2
        assert {agent["id"] for agent in agents["agents"]} == {"sales-01", "billing-01"}
        for agent in agents["agents"]:
            assert agent["name"] == agent["id"].title()
            assert agent["first_seen_at"] <= agent["last_seen_at"]

        _, other = await api.new_tenant_admin(tier="free")
        elsewhere = await api.client.get(f"{P}/agents", headers=api.headers(other))
        assert elsewhere.json()["total"] == 0, "the registry is per tenant"


async def test_usage_reports_three_of_five_handoffs(quota_api: tuple[Api, FrozenClock]) -> None:
    api, _ = quota_api
    _, key = await api.new_tenant_admin(tier="free")
    for _ in range(3):
        assert (await create(api, key)).status_code == 201
    report = await usage(api, key)
    assert report["tier"] == "free"
    assert (report["usage"]["handoffs_today"], report["limits"]["handoffs_per_day"]) == (3, 5)
    assert report["usage"]["agents"] == 2
    assert report["usage"]["api_keys"] == 1
    assert report["limits"]["max_packet_size"] == 64 * KIB
    assert report["resets_in_seconds"] == 43200
    assert report["usage"]["day"] == datetime.now(UTC).date().isoformat()


# -- operator overrides -------------------------------------------------------------------------


async def test_tenant_handoffs_per_day_overrides_its_tier(
    quota_api: tuple[Api, FrozenClock],
) -> None:
    api, _ = quota_api
    tenant_id, key = await api.new_tenant_admin(tier="free")
    await patch_tenant(api, tenant_id, handoffs_per_day=2)
    assert [(await create(api, key)).status_code for _ in range(3)] == [201, 201, 429]
    await patch_tenant(api, tenant_id, handoffs_per_day=7)
    assert [(await create(api, key)).status_code for _ in range(6)] == [201] * 5 + [429]
    assert (await usage(api, key))["limits"]["handoffs_per_day"] == 7

    business_id, business = await api.new_tenant_admin(tier="business")
    await patch_tenant(api, business_id, handoffs_per_day=1)
    assert [(await create(api, business)).status_code for _ in range(2)] == [201, 429]


async def test_operator_tier_change_applies_the_new_limits(
    quota_api: tuple[Api, FrozenClock],
) -> None:
    api, _ = quota_api
    tenant_id, key = await api.new_tenant_admin(tier="free")
    for _ in range(5):
        await create(api, key)
    assert (await create(api, key)).status_code == 429

    await patch_tenant(api, tenant_id, tier="pro")
    upgraded = await create(api, key, source="new-agent")
    assert upgraded.status_code == 201, upgraded.text
    assert upgraded.headers["X-RateLimit-Tier"] == "pro"
    new_key = {"name": "second", "role": "reader"}
    assert (
        await api.client.post(f"{P}/keys", json=new_key, headers=api.headers(key))
    ).status_code == 201
    assert (await usage(api, key))["tier"] == "pro"

    await patch_tenant(api, tenant_id, tier="free")
    assert (await create(api, key)).status_code == 429
    assert (await create(api, key, "x" * (65 * KIB))).status_code == 413


# -- metrics ------------------------------------------------------------------------------------


async def test_rate_limit_and_quota_metrics_count_refusals(db: Db) -> None:
    clock = noon_today()
    async with serve(db, clock=clock, rate_limit_per_minute=10, auth_failures_per_minute=1) as api:
        _, key = await api.new_tenant_admin(tier="free")

        async def snapshot() -> dict[str, float]:
            return {
                "key": await metric(
                    api, "handoffrail_rate_limited_total", tier="free", scope="key"
                ),
                "auth": await metric(api, "handoffrail_rate_limited_total", scope="auth_failures"),
                **{
                    quota: await metric(
                        api, "handoffrail_quota_rejections_total", tier="free", quota=quota
                    )
                    for quota in ("handoffs_per_day", "max_api_keys", "max_agents")
                },
                "size": await metric(
                    api, "handoffrail_quota_rejections_total", quota="max_packet_size"
                ),
            }

        before = await snapshot()
        await api.client.post(
            f"{P}/keys", json={"name": "k", "role": "reader"}, headers=api.headers(key)
        )
        statuses = [(await create(api, key)).status_code for _ in range(6)]
        assert statuses == [201] * 5 + [429]
        assert (await create(api, key, source="third")).status_code == 403
        assert (await create(api, key, "x" * (65 * KIB))).status_code == 413
        assert (await api.client.get(f"{P}/packets", headers=api.headers(key))).is_success
        # the 11th request this minute
        limited = await api.client.get(f"{P}/packets", headers=api.headers(key))
        assert_problem(limited, 429, "rate_limit.exceeded")
        for _ in range(2):
            await api.client.get(f"{P}/packets", headers={"X-API-Key": "garbage"})
        after = await snapshot()
        delta = {name: after[name] - before[name] for name in before}
        assert delta == {
            "key": 1,
            "auth": 1,
            "handoffs_per_day": 1,
            "max_api_keys": 1,
            "max_agents": 1,
            "size": 1,
        }
