"""Rehearsal: SIGTERM to Gunicorn while a request is in flight lets that request complete;
to `handoffrail serve` with a request stuck past the shutdown timeout, it is answered 503.

The request is made slow deterministically: a test-owned PostgreSQL transaction holds the packet's
row lock, so the PATCH waits inside the server; SIGTERM arrives; then the lock is released.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from handoffrail_server.db import migrations
from handoffrail_server.keys.tokens import generate_key
from tests.conftest import (
    TEST_SECRET,
    create_pg_database,
    drop_pg_database,
    free_port,
    packet_body,
)
from tests.deploy.helpers import ROOT, clean_env, tool
from tests.processes import wait_for


@pytest.mark.postgres
@pytest.mark.slow
def test_sigterm_during_a_slow_request_lets_it_complete(tmp_path: Path) -> None:
    name, url = create_pg_database()
    migrations.upgrade(url)
    port, key = free_port(), generate_key()
    env = clean_env(
        HR_ENVIRONMENT="staging",
        HR_SECRET_KEY=TEST_SECRET,
        HR_DATABASE_URL=url,
        HR_BOOTSTRAP_API_KEY=key,
        HR_TIER_DEFAULT="business",
        HR_EXPIRY_INTERVAL_SECONDS="0",
        HR_LOG_LEVEL="info",  # Gunicorn's and Uvicorn's start-up lines, checked below
        HR_BIND_HOST="127.0.0.1",
        HR_PORT=str(port),
        WEB_CONCURRENCY="1",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    (tmp_path / "metrics").mkdir()
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                tool("gunicorn"),
                *("-c", str(ROOT / "deploy/gunicorn.conf.py"), "handoffrail_server.asgi:app"),
            ],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": key}
    try:
        wait_for(f"{base}/health", process, log)
        created = httpx.post(f"{base}/api/v1/packets", json=packet_body(), headers=headers)
        assert created.status_code == 201, created.text
        packet_id = created.json()["id"]
        outcome: dict[str, object] = {}

        async def hold_lock_then_release(started: threading.Event) -> None:
            connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            try:
                transaction = connection.transaction()
                await transaction.start()
                await connection.execute(
                    "SELECT 1 FROM packet WHERE id = $1 FOR UPDATE", uuid.UUID(packet_id)
                )
                started.set()
                await asyncio.sleep(1.5)  # the PATCH is now waiting on this lock
                os.killpg(process.pid, signal.SIGTERM)
                await asyncio.sleep(1.0)  # shutdown has begun; the request is still in flight
                await transaction.rollback()
            finally:
                await connection.close()

        def patch() -> None:
            response = httpx.patch(
                f"{base}/api/v1/packets/{packet_id}",
                json={"status": "failed"},
                headers=headers,
                timeout=30,
            )
            outcome["status"] = response.status_code
            outcome["body"] = response.json()

        locked = threading.Event()
        holder = threading.Thread(target=lambda: asyncio.run(hold_lock_then_release(locked)))
        holder.start()
        assert locked.wait(10)
        client = threading.Thread(target=patch)
        client.start()
        holder.join(timeout=20)
        client.join(timeout=30)
        assert outcome.get("status") == 200, (outcome, log.read_text()[-3000:])
        assert outcome["body"]["status"] == "failed"  # type: ignore[index]
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
        events = json_lines(log.read_text())  # Gunicorn's and Uvicorn's lines are JSON too
        assert {"gunicorn.error", "uvicorn.error"} <= {event.get("logger") for event in events}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        drop_pg_database(name)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a server's output as a JSON object (fails on a line that is not one)."""
    events = []
    for line in text.splitlines():
        if line.strip():
            try:
                event = json.loads(line)
            except ValueError:
                pytest.fail(f"not a JSON line: {line!r}\n{text[-3000:]}")
            assert isinstance(event, dict), line
            events.append(event)
    return events


def _fetchval(url: str, query: str, *args: object) -> Any:
    """One value from the test database, on a connection of its own."""

    async def fetch() -> Any:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return await connection.fetchval(query, *args)
        finally:
            await connection.close()

    return asyncio.run(fetch())


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize(
    ("runner", "group_commit"), [("serve", "true"), ("serve", "false"), ("gunicorn", "true")]
)
def test_sigterm_with_a_request_stuck_past_the_timeout_answers_503_and_exits(
    tmp_path: Path, runner: str, group_commit: str
) -> None:
    """`handoffrail serve` with `HR_SHUTDOWN_TIMEOUT_SECONDS=1`, or Gunicorn with a graceful
    timeout of 6 s (its worker cancels after 1 s): a PATCH stuck on a row lock that is never
    released is cancelled, answered 503, its change is not made, and the process still closes
    its pools and exits (it used to wait for the lock, or be killed)."""
    name, url = create_pg_database()
    migrations.upgrade(url)
    port, key = free_port(), generate_key()
    env = clean_env(
        HR_ENVIRONMENT="staging",
        HR_SECRET_KEY=TEST_SECRET,
        HR_DATABASE_URL=url,
        HR_BOOTSTRAP_API_KEY=key,
        HR_TIER_DEFAULT="business",
        HR_EXPIRY_INTERVAL_SECONDS="0",
        HR_LOG_LEVEL="info",
        HR_HOST="127.0.0.1",
        HR_PORT=str(port),
        HR_SHUTDOWN_TIMEOUT_SECONDS="1",
        # the PATCH of a packet this process just created is one self-committing statement
        # (recent packet rows): sent by a batch's own task, or by the request's
        HR_DB_GROUP_COMMIT=group_commit,
        HR_BIND_HOST="127.0.0.1",
        WEB_CONCURRENCY="1",  # the create and the PATCH meet in one process (recent rows)
        GUNICORN_GRACEFUL_TIMEOUT="6",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    (tmp_path / "metrics").mkdir()
    command = {
        "serve": [tool("handoffrail"), "serve"],
        "gunicorn": [
            tool("gunicorn"),
            *("-c", str(ROOT / "deploy/gunicorn.conf.py"), "handoffrail_server.asgi:app"),
        ],
    }[runner]
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": key}
    release = threading.Event()
    try:
        wait_for(f"{base}/health", process, log)
        created = httpx.post(f"{base}/api/v1/packets", json=packet_body(), headers=headers)
        assert created.status_code == 201, created.text
        packet_id = created.json()["id"]
        outcome: dict[str, object] = {}

        async def hold_lock(locked: threading.Event) -> None:
            connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            try:
                async with connection.transaction():
                    await connection.execute(
                        "SELECT 1 FROM packet WHERE id = $1 FOR UPDATE", uuid.UUID(packet_id)
                    )
                    locked.set()
                    await asyncio.to_thread(release.wait, 60)
            finally:
                await connection.close()

        def patch() -> None:
            try:
                response = httpx.patch(
                    f"{base}/api/v1/packets/{packet_id}",
                    json={"status": "failed"},
                    headers=headers,
                    timeout=30,
                )
                outcome["status"] = response.status_code
                outcome["body"] = response.json()
            except httpx.HTTPError as error:
                outcome["error"] = repr(error)

        locked = threading.Event()
        holder = threading.Thread(target=lambda: asyncio.run(hold_lock(locked)))
        holder.start()
        assert locked.wait(10)
        client = threading.Thread(target=patch)
        client.start()
        deadline = time.monotonic() + 10
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'"
        )
        while not _fetchval(url, waiting, name):  # the PATCH waits on the lock
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)
        # the lock is still held; Uvicorn ends by re-raising the signal it caught (0.29+)
        assert process.wait(timeout=20) in (0, -signal.SIGTERM), log.read_text()[-3000:]
        client.join(timeout=10)
        assert outcome.get("status") == 503, (outcome, log.read_text()[-3000:])
        assert outcome["body"]["code"] == "service.shutting_down"  # type: ignore[index]
        text = log.read_text()
        assert "server.stopped" in text, text[-3000:]  # the lifespan's shutdown ran
        events = json_lines(text)  # Uvicorn's lines too, its traceback of the cancel included
        cancelled = [event for event in events if "Exception in ASGI application" in event["event"]]
        assert cancelled, text[-3000:]
        assert "CancelledError" in cancelled[0]["exception"], text[-3000:]
        release.set()
        holder.join(timeout=10)
        status = _fetchval(url, "SELECT status FROM packet WHERE id = $1", uuid.UUID(packet_id))
        assert status == "created", text  # the cancelled PATCH changed nothing
    finally:
        release.set()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        drop_pg_database(name)
