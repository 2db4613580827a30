"""Real `handoffrail worker` processes: kill -9 mid-way loses nothing, two workers never deliver
the same attempt twice, SIGTERM finishes in-flight work; scheduled ticks run once; and
`handoffrail jobs run NAME` for every job.

Every subprocess is bounded by timeouts and killed in `finally`; every wait loop is bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from handoffrail_server.clock import FrozenClock, SystemClock
from handoffrail_server.db import migrations
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import JobRun, Packet, WebhookAttempt, WebhookDelivery
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.main import create_app
from handoffrail_server.worker.jobs import JOBS, JobContext, run_due
from tests.conftest import bootstrap_operator_key, make_settings, packet_body
from tests.integration.webhook_receiver import Receiver

CLI = Path(sys.executable).with_name("handoffrail")
SECRET = "crash-test-secret-0123456789"
CLI_TIMEOUT = 60
CONCURRENCY = 4

pytestmark = pytest.mark.slow


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HR_")}
    env.update(
        {
            "COLUMNS": "250",
            "NO_COLOR": "1",
            "HR_DATABASE_URL": database_url,
            "HR_ENVIRONMENT": "development",
            "HR_LOG_LEVEL": "warning",
            "HR_WEBHOOK_ALLOW_PRIVATE": "true",
            "HR_WEBHOOK_LEASE_SECONDS": "2",
            "HR_WORKER_POLL_SECONDS": "0.1",
            "HR_WORKER_CONCURRENCY": str(CONCURRENCY),
        }
    )
    env.update(extra)
    return env


def run_cli(database_url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args],
        env=cli_env(database_url, **extra),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


@contextmanager
def worker_process(database_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`handoffrail worker --no-schedule`, always killed on the way out."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            [str(CLI), "worker", "--no-schedule"],
            env=cli_env(database_url),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=15)


def stop_gracefully(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)


@asynccontextmanager
async def hook_api(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """An in-process app (private targets allowed) and operator headers."""
    key = await asyncio.to_thread(bootstrap_operator_key, database_url)
    app = create_app(make_settings(database_url, webhook_allow_private=True))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield client, {"X-API-Key": key}


async def seed(database_url: str, receiver_url: str, packets: int) -> None:
    """Register one packet.created hook and create `packets` packets (batches of 50)."""
    async with hook_api(database_url) as (client, headers):
        hook = await client.post(
            "/api/v1/hooks",
            json={"url": receiver_url, "events": ["packet.created"], "secret": SECRET},
            headers=headers,
        )
        assert hook.status_code == 201, hook.text
        for start in range(0, packets, 50):
            batch = [packet_body(f"packet {n}") for n in range(start, min(start + 50, packets))]
            response = await client.post(
                "/api/v1/packets/batch", json={"packets": batch}, headers=headers
            )
            assert response.status_code == 201, response.text
            assert response.json()["errors"] == []


class Db:
    """Direct reads of the outbox tables."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, pool_size=2, max_overflow=2)
        self.sessions = create_sessionmaker(engine=self.engine)

    async def statuses(self) -> Counter[str]:
        async with unit_of_work(self.sessions) as session:
            rows = await session.execute(
                select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
            )
            return Counter({status: int(count) for status, count in rows.all()})

    async def event_ids(self) -> set[str]:
        async with unit_of_work(self.sessions) as session:
            rows = await session.execute(select(WebhookDelivery.event_id))
            return {str(event_id) for event_id in rows.scalars()}

    async def duplicate_attempt_numbers(self) -> list[Any]:
        async with unit_of_work(self.sessions) as session:
            rows = await session.execute(
                select(WebhookAttempt.delivery_id, WebhookAttempt.attempt, func.count())
                .group_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt)
                .having(func.count() > 1)
            )
            return list(rows.all())

    async def attempt_rows(self) -> int:
        async with unit_of_work(self.sessions) as session:
            result = await session.execute(select(func.count()).select_from(WebhookAttempt))
            return int(result.scalar_one())

    async def wait_all_delivered(self, total: int, timeout: float) -> Counter[str]:
        deadline = time.monotonic() + timeout
        statuses = await self.statuses()
        while statuses.get("delivered", 0) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            statuses = await self.statuses()
        return statuses

    async def close(self) -> None:
        await self.engine.dispose()


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[tuple[str, Db]]:
    await asyncio.to_thread(migrations.upgrade, postgres_url)
    db = Db(postgres_url)
    try:
        yield postgres_url, db
    finally:
        await db.close()


async def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


@pytest.mark.postgres
@pytest.mark.timeout(180)
async def test_kill_9_mid_way_then_a_new_worker_delivers_every_event(
    pg: tuple[str, Db], tmp_path: Path
) -> None:
    url, db = pg
    total = 200
    with Receiver(delay=0.05) as receiver:
        await seed(url, receiver.url, total)
        assert (await db.statuses())["pending"] == total

        with worker_process(url, tmp_path / "worker-1.log") as first:
            reached = await wait_until(lambda: len(receiver.snapshot()) >= total // 2, 60)
            assert reached, (tmp_path / "worker-1.log").read_text()
            os.kill(first.pid, signal.SIGKILL)
            assert first.wait(timeout=15) == -signal.SIGKILL
        at_kill = len(receiver.event_ids())
        assert at_kill < total, "the worker finished before it could be killed mid-way"
        assert (await db.statuses()).get("delivered", 0) < total

        with worker_process(url, tmp_path / "worker-2.log") as second:
            statuses = await db.wait_all_delivered(total, timeout=90)
            assert statuses == Counter({"delivered": total}), (
                statuses,
                (tmp_path / "worker-2.log").read_text(),
            )
            assert stop_gracefully(second) == 0

        received = receiver.event_ids()
    # at least once: every event arrived, none is missing, none is foreign
    assert len(received) == total
    assert set(received) == await db.event_ids()
    # duplicates only come from the deliveries in flight when the first worker died
    assert sum(received.values()) - total <= CONCURRENCY
    assert await db.duplicate_attempt_numbers() == []


@pytest.mark.postgres
@pytest.mark.timeout(180)
async def test_two_workers_at_once_deliver_each_event_exactly_once(
    pg: tuple[str, Db], tmp_path: Path
) -> None:
    url, db = pg
    total = 200
    with Receiver(delay=0.02) as receiver:
        await seed(url, receiver.url, total)
        with (
            worker_process(url, tmp_path / "a.log") as worker_a,
            worker_process(url, tmp_path / "b.log") as worker_b,
        ):
            statuses = await db.wait_all_delivered(total, timeout=90)
            assert statuses == Counter({"delivered": total}), statuses
            assert stop_gracefully(worker_a) == 0
            assert stop_gracefully(worker_b) == 0
        received = receiver.event_ids()
    assert set(received) == await db.event_ids()
    # nobody died, so no lease expired: not a single duplicate request
    assert set(received.values()) == {1}
    assert await db.duplicate_attempt_numbers() == []
    assert await db.attempt_rows() == total


@pytest.mark.postgres
async def test_sigterm_lets_the_in_flight_delivery_finish(
    pg: tuple[str, Db], tmp_path: Path
) -> None:
    url, db = pg
    with Receiver(delay=1.0) as receiver:
        await seed(url, receiver.url, 1)
        with worker_process(url, tmp_path / "worker.log") as process:
            assert await wait_until(receiver.in_flight.is_set, 30)
            assert (await db.statuses()) == Counter({"pending": 1})  # still in flight
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.wait, 20)
            assert code == 0, (tmp_path / "worker.log").read_text()
            assert time.monotonic() - started < 15
    assert await db.statuses() == Counter({"delivered": 1})
    assert await db.attempt_rows() == 1
    assert len(receiver.snapshot()) == 1


@pytest.mark.postgres
async def test_concurrent_run_due_runs_each_tick_once(postgres_url: str) -> None:
    await asyncio.to_thread(migrations.upgrade, postgres_url)
    settings = make_settings(postgres_url)
    clock = FrozenClock(datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC))
    engines = [create_engine(postgres_url, pool_size=2, max_overflow=2) for _ in range(4)]
    contexts = [JobContext(create_sessionmaker(engine), settings, clock) for engine in engines]
    scheduled = {name for name, job in JOBS.items() if job.interval_seconds > 0}
    try:
        results = await asyncio.gather(*(run_due(context) for context in contexts))
        ran = Counter(name for result in results for name, _message in result)
        assert ran == Counter(dict.fromkeys(scheduled, 1))

        # the same tick again: nobody runs anything
        again = await asyncio.gather(*(run_due(context) for context in contexts))
        assert again == [[], [], [], []]

        # an hour later every job has a new tick, again run exactly once
        clock.advance(3600)
        results = await asyncio.gather(*(run_due(context) for context in contexts))
        ran = Counter(name for result in results for name, _message in result)
        assert ran == Counter(dict.fromkeys(scheduled, 1))

        async with unit_of_work(contexts[0].sessions) as session:
            rows = (await session.execute(select(JobRun.name, JobRun.tick))).all()
        assert len(rows) == 2 * len(scheduled)
        assert Counter(name for name, _tick in rows) == Counter(dict.fromkeys(scheduled, 2))
    finally:
        for engine in engines:
            await engine.dispose()


# -- `handoffrail jobs ...` and `handoffrail webhooks ...` on SQLite ------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    migrations.upgrade(url)
    return url


@pytest.mark.parametrize("name", sorted(JOBS))
def test_jobs_run_exits_0_for_every_job(sqlite_url: str, name: str) -> None:
    result = run_cli(sqlite_url, "jobs", "run", name)
    assert result.returncode == 0, result.stderr
    assert name in result.stdout


def test_jobs_list_names_every_job(sqlite_url: str) -> None:
    result = run_cli(sqlite_url, "jobs", "list")
    assert result.returncode == 0, result.stderr
    for name in JOBS:
        assert name in result.stdout


def test_jobs_run_of_an_unknown_job_exits_2(sqlite_url: str) -> None:
    result = run_cli(sqlite_url, "jobs", "run", "make-coffee")
    assert result.returncode == 2
    assert "unknown job" in result.stderr


async def test_expire_packets_job_expires_an_overdue_packet_and_queues_its_event(
    sqlite_url: str,
) -> None:
    async with hook_api(sqlite_url) as (client, headers):
        hook = await client.post(
            "/api/v1/hooks",
            json={"url": "http://127.0.0.1:9/hook", "events": ["packet.expired"], "secret": SECRET},
            headers=headers,
        )
        assert hook.status_code == 201, hook.text
        overdue = (await client.post("/api/v1/packets", json=packet_body(), headers=headers)).json()
        fresh = (await client.post("/api/v1/packets", json=packet_body(), headers=headers)).json()
    engine = create_engine(sqlite_url, pool_size=1, max_overflow=0)
    sessions = create_sessionmaker(engine)
    try:
        async with unit_of_work(sessions) as session:
            await session.execute(
                update(Packet)
                .where(Packet.id == uuid.UUID(overdue["id"]))
                .values(expires_at=SystemClock().now() - timedelta(minutes=5))
            )
        result = await asyncio.to_thread(run_cli, sqlite_url, "jobs", "run", "expire-packets")
        assert result.returncode == 0, result.stderr
        assert "expired 1 packet" in result.stdout
        async with unit_of_work(sessions) as session:
            expired = await session.get(Packet, uuid.UUID(overdue["id"]))
            untouched = await session.get(Packet, uuid.UUID(fresh["id"]))
            queued = (await session.execute(select(WebhookDelivery))).scalars().all()
        assert expired is not None
        assert expired.status == "expired"
        assert untouched is not None
        assert untouched.status == "created"
        assert [(row.event_type, str(row.packet_id)) for row in queued] == [
            ("packet.expired", overdue["id"])
        ]
        # running it again changes nothing
        again = await asyncio.to_thread(run_cli, sqlite_url, "jobs", "run", "expire-packets")
        assert "expired 0 packet" in again.stdout
    finally:
        await engine.dispose()


async def test_webhooks_cli_replays_dead_letters(sqlite_url: str) -> None:
    async with hook_api(sqlite_url) as (client, headers):
        hook = (
            await client.post(
                "/api/v1/hooks",
                json={"url": "http://127.0.0.1:9/hook", "secret": SECRET},
                headers=headers,
            )
        ).json()
        ids = [
            (await client.post(f"/api/v1/hooks/{hook['id']}/test", headers=headers)).json()["id"]
            for _ in range(3)
        ]
    engine = create_engine(sqlite_url, pool_size=1, max_overflow=0)
    sessions = create_sessionmaker(engine)
    try:
        async with unit_of_work(sessions) as session:
            await session.execute(update(WebhookDelivery).values(status="dead_letter", attempts=7))
        one = await asyncio.to_thread(run_cli, sqlite_url, "webhooks", "replay", ids[0])
        assert one.returncode == 0, (one.stdout, one.stderr)
        twice = await asyncio.to_thread(run_cli, sqlite_url, "webhooks", "replay", ids[0])
        assert twice.returncode == 1, (twice.stdout, twice.stderr)  # no longer dead-lettered
        rest = await asyncio.to_thread(run_cli, sqlite_url, "webhooks", "retry-dead")
        assert rest.returncode == 0, (rest.stdout, rest.stderr)
        assert "queued 2 deliveries" in rest.stdout
        async with unit_of_work(sessions) as session:
            rows = (await session.execute(select(WebhookDelivery))).scalars().all()
        assert {(row.status, row.attempts) for row in rows} == {("pending", 0)}
        assert {str(row.id) for row in rows} == set(ids)
    finally:
        await engine.dispose()
