"""The `handoffrail` command as an operator runs it (real subprocesses), and the start-up rules
of the app: settings validation, the at-head check outside development, the bootstrap key."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import structlog
from sqlalchemy import select, text

from handoffrail_server.db import migrations
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import Packet, Tenant
from handoffrail_server.keys import tokens
from handoffrail_server.main import SchemaNotAtHead, create_app
from handoffrail_server.settings import KEY_PATTERN, PRIVATE_NETWORKS
from tests.conftest import free_port, make_settings, packet_body
from tests.processes import wait_for

CLI = Path(sys.executable).with_name("handoffrail")
KEY_IN_TEXT = re.compile(r"hr_[A-Za-z0-9_-]{43}")
CLI_TIMEOUT = 60


def run_cli(*args: str, **env_overrides: str) -> subprocess.CompletedProcess[str]:
    """Run `handoffrail <args>` with no inherited HR_* variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HR_")}
    env.update({"COLUMNS": "250", "NO_COLOR": "1"})
    env.update(env_overrides)
    return subprocess.run(
        [str(CLI), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def one_line(text: str) -> str:
    """Output with Rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, un-migrated SQLite database file."""
    return f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def migrated_sqlite_url(sqlite_url: str) -> str:
    migrations.upgrade(sqlite_url)
    return sqlite_url


def test_keys_generate_prints_a_fresh_well_formed_key_each_time() -> None:
    first = run_cli("keys", "generate")
    second = run_cli("keys", "generate")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert KEY_PATTERN.fullmatch(first.stdout.strip())
    assert KEY_PATTERN.fullmatch(second.stdout.strip())
    assert tokens.looks_like_key(first.stdout.strip())
    assert first.stdout.strip() != second.stdout.strip()


async def test_keys_create_prints_a_writer_key_that_authenticates_in_its_tenant(
    migrated_sqlite_url: str,
) -> None:
    url = migrated_sqlite_url
    result = run_cli("keys", "create", "--tenant", "acme", "--role", "writer", HR_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    output = one_line(result.stdout)
    assert "created tenant 'acme'" in output
    [plain] = KEY_IN_TEXT.findall(result.stdout)

    app = create_app(make_settings(url))
    transport = httpx.ASGITransport(app=app)
    headers = {"X-API-Key": plain}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        created = await client.post("/api/v1/packets", json=packet_body(), headers=headers)
        assert created.status_code == 201, created.text
        listed = await client.get("/api/v1/packets", headers=headers)
        assert listed.status_code == 200
        assert [packet["id"] for packet in listed.json()["packets"]] == [created.json()["id"]]
        # writer, not admin: key management is refused and names the role held
        keys = await client.get("/api/v1/keys", headers=headers)
        assert keys.status_code == 403
        assert keys.json()["code"] == "auth.insufficient_role"
        assert "current role: writer" in keys.json()["detail"]
        wrong = await client.get("/api/v1/packets", headers={"X-API-Key": tokens.generate_key()})
        assert wrong.status_code == 401

    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session:
            acme = (await session.execute(select(Tenant).where(Tenant.name == "acme"))).scalar_one()
            packet = await session.get(Packet, uuid.UUID(created.json()["id"]))
    finally:
        await engine.dispose()
    assert packet is not None
    assert packet.tenant_id == acme.id
    assert acme.id in output
    assert not acme.is_operator


def test_keys_create_for_an_existing_tenant_does_not_create_it_again(
    migrated_sqlite_url: str,
) -> None:
    url = migrated_sqlite_url
    first = run_cli("keys", "create", "--tenant", "acme", "--role", "agent", HR_DATABASE_URL=url)
    second = run_cli("keys", "create", "--tenant", "acme", "--role", "reader", HR_DATABASE_URL=url)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "created tenant" in first.stdout
    assert "created tenant" not in second.stdout
    assert KEY_IN_TEXT.findall(first.stdout) != KEY_IN_TEXT.findall(second.stdout)


def test_tenants_create_list_and_set_tier(migrated_sqlite_url: str) -> None:
    url = migrated_sqlite_url
    created = run_cli("tenants", "create", "globex", "--tier", "pro", HR_DATABASE_URL=url)
    assert created.returncode == 0, created.stderr
    match = re.search(r"created tenant 'globex': (\S+)", one_line(created.stdout))
    assert match, created.stdout
    tenant_id = match.group(1)

    listed = run_cli("tenants", "list", HR_DATABASE_URL=url)
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if "globex" in line]
    assert tenant_id in row
    assert "pro" in row

    changed = run_cli("tenants", "set-tier", "globex", "business", HR_DATABASE_URL=url)
    assert changed.returncode == 0, changed.stderr
    assert "is now business" in changed.stdout
    by_id = run_cli("tenants", "set-tier", tenant_id, "free", HR_DATABASE_URL=url)
    assert by_id.returncode == 0, by_id.stderr

    listed = run_cli("tenants", "list", HR_DATABASE_URL=url)
    [row] = [line for line in listed.stdout.splitlines() if "globex" in line]
    assert " free " in f" {row} "


def test_tenants_commands_refuse_duplicates_unknown_tenants_and_bad_tiers(
    migrated_sqlite_url: str,
) -> None:
    url = migrated_sqlite_url
    assert run_cli("tenants", "create", "initech", HR_DATABASE_URL=url).returncode == 0

    duplicate = run_cli("tenants", "create", "initech", HR_DATABASE_URL=url)
    assert duplicate.returncode == 1
    assert "already exists" in one_line(duplicate.stderr)

    unknown = run_cli("tenants", "set-tier", "nobody", "pro", HR_DATABASE_URL=url)
    assert unknown.returncode == 1
    assert "not found" in one_line(unknown.stderr)

    bad_tier = run_cli("tenants", "set-tier", "initech", "platinum", HR_DATABASE_URL=url)
    assert bad_tier.returncode == 2
    assert "tier must be free, pro or business" in one_line(bad_tier.stderr)
    bad_create = run_cli("tenants", "create", "umbrella", "--tier", "gold", HR_DATABASE_URL=url)
    assert bad_create.returncode == 2


def test_migrate_current_fails_before_upgrade_and_succeeds_after(sqlite_url: str) -> None:
    head = migrations.head_revision()
    before = run_cli("migrate", "current", HR_DATABASE_URL=sqlite_url)
    assert before.returncode == 1
    assert f"current: none head: {head}" in one_line(before.stdout)

    upgraded = run_cli("migrate", "up", HR_DATABASE_URL=sqlite_url)
    assert upgraded.returncode == 0, upgraded.stderr

    after = run_cli("migrate", "current", HR_DATABASE_URL=sqlite_url)
    assert after.returncode == 0, after.stderr
    assert f"current: {head} head: {head}" in one_line(after.stdout)

    downgraded = run_cli("migrate", "down", "base", HR_DATABASE_URL=sqlite_url)
    assert downgraded.returncode == 0, downgraded.stderr
    assert run_cli("migrate", "current", HR_DATABASE_URL=sqlite_url).returncode == 1


@pytest.mark.parametrize(
    ("environment", "variable"),
    [
        pytest.param(
            {"HR_ENVIRONMENT": "production", "HR_SECRET_KEY": "s" * 48},
            "HR_DATABASE_URL",
            id="production-on-sqlite",
        ),
        pytest.param({"HR_ENVIRONMENT": "staging"}, "HR_DATABASE_URL", id="staging-on-sqlite"),
        pytest.param({"HR_BOOTSTRAP_API_KEY": "nope"}, "HR_BOOTSTRAP_API_KEY", id="bad-key"),
        pytest.param({"HR_LOG_LEVEL": "loud"}, "HR_LOG_LEVEL", id="bad-log-level"),
        pytest.param({"HR_TIER_DEFAULT": "gold"}, "HR_TIER_DEFAULT", id="bad-tier"),
    ],
)
def test_invalid_settings_make_the_cli_exit_with_a_message_naming_the_variable(
    sqlite_url: str, environment: dict[str, str], variable: str
) -> None:
    result = run_cli("migrate", "current", HR_DATABASE_URL=sqlite_url, **environment)
    assert result.returncode != 0
    message = one_line(result.stderr)
    assert "configuration error" in message
    assert variable in message
    assert "Traceback" not in result.stderr


def test_production_with_a_weak_secret_is_refused_naming_hr_secret_key() -> None:
    result = run_cli(
        "migrate",
        "current",
        HR_ENVIRONMENT="production",
        HR_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/unused",
    )
    assert result.returncode != 0
    assert "HR_SECRET_KEY" in one_line(result.stderr)


@pytest.mark.parametrize(
    ("trusted", "forwarded", "believed"),
    [
        ("127.0.0.1", "203.0.113.{n}", True),
        ("10.255.0.1", "203.0.113.{n}", False),
        (PRIVATE_NETWORKS, "198.51.100.{n}, 203.0.113.7", False),
        ("*", "198.51.100.{n}, 203.0.113.7", True),
    ],
    ids=["proxy-trusted", "proxy-not-trusted", "private-networks-spoofed", "star-spoofed"],
)
def test_serve_believes_x_forwarded_for_only_from_hr_forwarded_allow_ips(
    sqlite_url: str, tmp_path: Path, trusted: str, forwarded: str, believed: bool
) -> None:
    """Failed key guesses are throttled per client IP (2 a minute here): from a trusted proxy
    each forwarded address has its own budget; from anyone else the header is ignored. A
    client's own X-Forwarded-For entry (left of the one the platform's proxy appends) is
    believed with `*` and ignored with the private networks the platform files set."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("HR_")}
    env.update(
        HR_DATABASE_URL=sqlite_url,
        HR_FORWARDED_ALLOW_IPS=trusted,
        HR_AUTH_FAILURES_PER_MINUTE="2",
        HR_EXPIRY_INTERVAL_SECONDS="0",
        HR_LOG_LEVEL="warning",
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(CLI), "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health", process, log)
        statuses = [
            httpx.get(
                f"{base}/api/v1/packets",
                headers={"X-API-Key": "hr_" + "Z" * 43, "X-Forwarded-For": forwarded.format(n=n)},
                timeout=10,
            ).status_code
            for n in range(1, 5)
        ]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    assert statuses == ([401] * 4 if believed else [401, 401, 429, 429])


@pytest.mark.postgres
async def test_staging_app_refuses_to_start_on_an_unmigrated_database(postgres_url: str) -> None:
    # staging needs PostgreSQL; its secret rules are production-only, so the default is accepted
    app = create_app(make_settings(postgres_url, environment="staging"))
    try:
        with pytest.raises(SchemaNotAtHead, match=r"run `handoffrail migrate up`"):
            async with app.router.lifespan_context(app):
                pytest.fail("the app started on an un-migrated database")
    finally:
        await app.state.hr.engine.dispose()


@pytest.mark.postgres
async def test_staging_app_starts_once_the_database_is_at_head(postgres_url: str) -> None:
    await asyncio.to_thread(migrations.upgrade, postgres_url)
    app = create_app(make_settings(postgres_url, environment="staging"))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        response = await client.get("/health")
        assert response.status_code == 200


@pytest.mark.postgres
async def test_staging_app_refuses_a_database_one_revision_behind(postgres_url: str) -> None:
    await asyncio.to_thread(migrations.upgrade, postgres_url)
    await asyncio.to_thread(migrations.downgrade, postgres_url, "-1")
    app = create_app(make_settings(postgres_url, environment="staging"))
    try:
        with pytest.raises(SchemaNotAtHead, match=r"code expects"):
            async with app.router.lifespan_context(app):
                pytest.fail("the app started on a database behind its code")
    finally:
        await app.state.hr.engine.dispose()


@pytest.mark.postgres
async def test_staging_app_starts_on_a_database_a_newer_release_migrated(
    postgres_url: str,
) -> None:
    """A rolling deploy or an application rollback: the previous release meets a revision it
    does not know (expand-then-contract keeps the schema usable) and starts, with a warning."""
    await asyncio.to_thread(migrations.upgrade, postgres_url)
    engine = create_engine(postgres_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE alembic_version SET version_num = 'f00dfeed0001'")
            )
    finally:
        await engine.dispose()
    app = create_app(make_settings(postgres_url, environment="staging"))
    transport = httpx.ASGITransport(app=app)
    with structlog.testing.capture_logs() as logs:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        ):
            assert (await client.get("/health")).status_code == 200
    ahead = [line for line in logs if line["event"] == "schema.ahead_of_code"]
    assert ahead
    assert ahead[0]["database_revision"] == "f00dfeed0001"
    assert ahead[0]["code_head"] == migrations.head_revision()


async def test_bootstrap_api_key_from_settings_works_as_operator_after_start(
    migrated_url: str,
) -> None:
    plain = tokens.generate_key()
    app = create_app(make_settings(migrated_url, bootstrap_api_key=plain))
    transport = httpx.ASGITransport(app=app)
    headers = {"X-API-Key": plain}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        tenant = await client.post(
            "/api/v1/tenants", json={"name": "wayne", "tier": "pro"}, headers=headers
        )
        assert tenant.status_code == 201, tenant.text
        listed = await client.get("/api/v1/tenants", headers=headers)
        assert listed.status_code == 200
        assert {"wayne", "Default Tenant"} <= {row["name"] for row in listed.json()}

    # once keys exist, a start with another bootstrap key neither fails nor stores that key
    other = tokens.generate_key()
    again = create_app(make_settings(migrated_url, bootstrap_api_key=other))
    transport = httpx.ASGITransport(app=again)
    async with (
        again.router.lifespan_context(again),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        keys = await client.get("/api/v1/keys", headers=headers)
        assert keys.status_code == 200, keys.text
        assert len(keys.json()) == 1
        refused = await client.get("/api/v1/keys", headers={"X-API-Key": other})
        assert refused.status_code == 401


def test_commands_run_where_the_metrics_directory_does_not_exist_yet(tmp_path: Path) -> None:
    """The image sets PROMETHEUS_MULTIPROC_DIR; a platform may run a command without the
    entrypoint that used to create it."""
    directory = tmp_path / "not" / "there"
    result = run_cli("keys", "generate", PROMETHEUS_MULTIPROC_DIR=str(directory))
    assert result.returncode == 0, result.stderr
    assert KEY_PATTERN.fullmatch(result.stdout.strip())
    assert directory.is_dir()
