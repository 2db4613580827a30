"""Rehearsal: SIGTERM to Gunicorn while a request is in flight lets that request complete.

The request is made slow deterministically: a test-owned PostgreSQL transaction holds the packet's
row lock, so the PATCH waits inside the server; SIGTERM arrives; then the lock is released.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import uuid
from pathlib import Path

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
        HR_LOG_LEVEL="warning",
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
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        drop_pg_database(name)
