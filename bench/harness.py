"""The benchmark harness (issue 10): servers, load, ceilings and one table, in one run.

    python -m bench [--smoke] [--json PATH] [--profile DIR] [--only serve,gunicorn,sqlite]

1. PostgreSQL, one process (`handoffrail serve`): ceilings first (a bare ASGI app under Uvicorn,
   raw asyncpg INSERTs of the packet row at 1/10/50 connections, raw SKIP LOCKED claims by 8 and 32
   workers), then create at 1/10/50 clients, the full lifecycle at 10, 8 and 32 racers on the same
   packets, 32 claim-next workers, webhook latency (a local receiver + `handoffrail worker`), RSS.
2. PostgreSQL, Gunicorn + Uvicorn workers (`WEB_CONCURRENCY=2`, deploy/gunicorn.conf.py): the same
   against the bare app under Gunicorn.
3. SQLite (the embedded default), one process: create vs a raw SQLite insert ceiling.

Load comes from `bench.loadgen` in a separate process on loopback. Each database is a throw-away
one; every process started here is stopped in `finally`; every wait and loop is bounded. Double
claims are counted from the database: each packet's history must hold exactly one `claimed` event.
Exit status 1 on any double claim (correctness), never on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import driver_cost

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_ADMIN_DSN = os.environ.get(
    "HR_BENCH_PG_DSN",
    os.environ.get("HR_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
)
REDIS_URL = os.environ.get("HR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
START_TIMEOUT = 60.0
WORKER_POLL_SECONDS = 0.05
ORIGINAL_SQLITE_CREATES_PER_S = 85.0  # the original server's figure (issue 10)


@dataclass(frozen=True)
class Sizes:
    """Request counts and time caps (a scenario stops at whichever comes first)."""

    create: dict[int, int]
    seconds: float
    lifecycle: int
    race: dict[int, int]  # racers -> packets
    claim_next: int
    ceiling: int
    ceiling_seconds: float
    webhook: int
    sqlite_create: dict[int, int]
    claim_seconds: float  # time cap of each contended-claim row (>= 10,000 claim requests)
    driver_ops: int  # operations per driver-cost row (bench/driver_cost.py)


FULL = Sizes(
    create={1: 800, 10: 4000, 50: 6000},
    seconds=12.0,
    lifecycle=1500,
    race={8: 1000, 32: 300},
    claim_next=10_000,
    ceiling=40_000,
    ceiling_seconds=5.0,
    webhook=150,
    sqlite_create={10: 2500, 50: 2500},
    claim_seconds=25.0,
    driver_ops=1000,
)
SMOKE = Sizes(
    create={1: 5, 10: 20, 50: 50},
    seconds=3.0,
    lifecycle=10,
    race={8: 4, 32: 3},
    claim_next=200,
    ceiling=200,
    ceiling_seconds=1.0,
    webhook=3,
    sqlite_create={10: 20, 50: 50},
    claim_seconds=3.0,
    driver_ops=20,
)


@dataclass
class Row:
    """One line of the table."""

    server: str
    scenario: str
    clients: int | str
    result: dict[str, Any] = field(default_factory=dict)
    ceiling: str = ""
    ceiling_ops: float | None = None
    http_ops: float | None = None
    double: int | None = None
    notes: str = ""

    @property
    def ops_per_s(self) -> float:
        return float(self.result.get("ops_per_s", 0.0))

    @property
    def ratio(self) -> float | None:
        return self.ops_per_s / self.ceiling_ops if self.ceiling_ops else None

    @property
    def http_ratio(self) -> float | None:
        return self.ops_per_s / self.http_ops if self.http_ops else None


@dataclass
class Report:
    """Everything measured in the run."""

    rows: list[Row] = field(default_factory=list)
    ceilings: dict[str, float] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**values: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(("HR_", "PROMETHEUS_", "WEB_CONCURRENCY", "GUNICORN_"))
    }
    env.update(values)
    return env


def server_env(database_url: str, key: str, port: int, workdir: Path) -> dict[str, str]:
    """The server's environment: staging (JSON logs at info), limits out of the way."""
    return clean_env(
        HR_ENVIRONMENT="staging",
        HR_DATABASE_URL=database_url,
        HR_REDIS_URL=REDIS_URL,
        HR_REDIS_PREFIX=f"bench-{uuid.uuid4().hex[:8]}",
        HR_BOOTSTRAP_API_KEY=key,
        HR_TIER_DEFAULT="business",
        HR_TIER_QUOTAS='{"business": {"requests_per_hour": null, "max_agents": null}}',
        HR_RATE_LIMIT_PER_MINUTE="0",
        HR_LOG_LEVEL="info",
        HR_WEBHOOK_ALLOW_PRIVATE="true",
        HR_WORKER_POLL_SECONDS=str(WORKER_POLL_SECONDS),
        HR_PORT=str(port),
        HR_BIND_HOST="127.0.0.1",
    )


@dataclass
class Process:
    """A process we started (own session, so its whole group can be stopped)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(name: str, argv: list[str], env: dict[str, str], workdir: Path, url: str = "") -> Process:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Process(name, popen, log, url)


def stop(process: Process) -> None:
    """SIGTERM the process group, SIGKILL after 20 s (bounded)."""
    if process.popen.poll() is not None:
        return
    try:
        os.killpg(process.popen.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.popen.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=10)


@contextmanager
def running(
    name: str, argv: list[str], env: dict[str, str], workdir: Path, url: str = ""
) -> Iterator[Process]:
    process = start(name, argv, env, workdir, url)
    try:
        if url:
            wait_healthy(process)
        yield process
    finally:
        stop(process)


def wait_healthy(process: Process) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited early:\n{process.tail()}")
        try:
            with urllib.request.urlopen(f"{process.url}/health", timeout=2) as response:  # noqa: S310
                if response.status in (200, 201):
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{process.name} not healthy in {START_TIMEOUT}s:\n{process.tail()}")


def wait_for_log(process: Process, text: str, timeout: float = START_TIMEOUT) -> None:
    """Until `text` shows in the process's log (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited early:\n{process.tail()}")
        if text in process.log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} did not log {text!r} in {timeout}s:\n{process.tail()}")


def worker_pids(process: Process, expected: int) -> list[int]:
    """The serving processes: the process itself, or a Gunicorn master's children."""
    if expected == 1:
        return [process.popen.pid]
    deadline = time.monotonic() + START_TIMEOUT
    pid = process.popen.pid
    children: list[int] = []
    while time.monotonic() < deadline:
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            text = ""
        children = [int(part) for part in text.split()]
        if len(children) >= expected:
            return children
        time.sleep(0.2)
    return children


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario in a separate process; returns its JSON result."""
    budget = float(spec.get("seconds", 10)) * 6 + 120
    completed = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        timeout=budget,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"loadgen {spec['scenario']} failed ({completed.returncode}):\n"
            f"{completed.stderr.decode(errors='replace')[-3000:]}"
        )
    result: dict[str, Any] = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    return result


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of `pids` so far (from /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def app_loadgen(pids: list[int], spec: dict[str, Any]) -> dict[str, Any]:
    """`loadgen`, plus the server's own CPU per operation (robust to a shared machine)."""
    before = cpu_seconds(pids)
    result = loadgen(spec)
    ops = int(result.get("ops", 0))
    result["server_cpu_ms"] = 1000 * (cpu_seconds(pids) - before) / ops if ops else None
    return result


@contextmanager
def profiled(pid: int, profile_dir: Path | None, name: str) -> Iterator[None]:
    """py-spy (raw collapsed stacks) attached to `pid` while the block runs, when asked."""
    if profile_dir is None:
        yield
        return
    profile_dir.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [
            str(BIN / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(profile_dir / f"{name}.txt"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(0.5)
        yield
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(timeout=10)


# -- databases ----------------------------------------------------------------------------------


def _pg_dsn(name: str) -> str:
    return f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"


def _admin(statement: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


@contextmanager
def pg_database() -> Iterator[tuple[str, str]]:
    """A throw-away database: (asyncpg DSN, SQLAlchemy URL); dropped afterwards."""
    name = f"hr_bench_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        dsn = _pg_dsn(name)
        yield dsn, dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_query(dsn: str, sql: str, *args: Any) -> list[Any]:
    import asyncpg

    async def run() -> list[Any]:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await connection.fetch(sql, *args))
        finally:
            await connection.close()

    return asyncio.run(run())


def migrate(database_url: str, environment: str = "staging") -> None:
    env = clean_env(HR_DATABASE_URL=database_url, HR_ENVIRONMENT=environment)
    completed = subprocess.run(
        [str(BIN / "handoffrail"), "migrate", "up"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=180,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{completed.stderr.decode(errors='replace')[-3000:]}")


def double_claims(dsn: str, packet_ids: list[str]) -> tuple[int, int, int]:
    """(packets with more than one `claimed` event, with none, total `claimed` events)."""
    if not packet_ids:
        return 0, 0, 0
    rows = pg_query(
        dsn,
        "SELECT count(*) FILTER (WHERE n > 1), count(*) FILTER (WHERE n = 0), "
        "coalesce(sum(n), 0) FROM (SELECT p.id, (SELECT count(*) FROM packet_event e "
        "WHERE e.packet_id = p.id AND e.event_type = 'claimed') AS n "
        "FROM packet p WHERE p.id = ANY($1::uuid[])) AS s",
        [uuid.UUID(value) for value in packet_ids],
    )
    return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])


# -- phases ------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _statuses(result: dict[str, Any]) -> str:
    return " ".join(f"{code}x{count}" for code, count in result.get("statuses", {}).items())


def measure_http_ceiling(
    report: Report,
    label: str,
    argv: list[str],
    env: dict[str, str],
    workdir: Path,
    url: str,
    clients: list[int],
    sizes: Sizes,
) -> None:
    framework = "bench.framework_app:app" in argv
    with running(f"{'framework' if framework else 'bare'}-{label}", argv, env, workdir, url):
        for count in clients:
            result = loadgen(
                {
                    "scenario": "post",
                    "url": url,
                    "path": "/api/v1/packets",
                    "expect": 201,
                    "clients": count,
                    "count": sizes.ceiling,
                    "seconds": sizes.ceiling_seconds,
                }
            )
            if framework:  # a reference row, not a ceiling: FastAPI + pydantic, no storage
                report.add(Row(label, "floor: FastAPI + models, no DB", count, result))
                continue
            report.ceilings[f"http:{label}:{count}"] = result["ops_per_s"]
            report.add(Row(label, "ceiling: HTTP (bare ASGI)", count, result))


def measure_pg_ceilings(report: Report, dsn: str, sizes: Sizes) -> None:
    """Storage and claim ceilings in a copy of the packet table (same columns and indexes)."""
    pg_query(dsn, "CREATE TABLE IF NOT EXISTS packet_ceiling (LIKE packet INCLUDING ALL)")
    for clients in (1, 10, 50):
        result = loadgen(
            {
                "scenario": "pg_insert",
                "dsn": dsn,
                "table": "packet_ceiling",
                "clients": clients,
                "count": sizes.ceiling,
                "seconds": sizes.ceiling_seconds,
            }
        )
        report.ceilings[f"storage:{clients}"] = result["ops_per_s"]
        report.add(Row("postgres", "ceiling: raw INSERT (asyncpg)", clients, result))


def measure_claim_ceilings(report: Report, label: str, dsn: str, sizes: Sizes) -> None:
    """Raw SKIP LOCKED claims on a copy of the app's own queue (same rows, same depth)."""
    for workers in (8, 32):
        pg_query(dsn, "TRUNCATE packet_ceiling")
        columns = pg_query(
            dsn,
            "SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position) "
            "FROM information_schema.columns "
            "WHERE table_name = 'packet' AND is_generated = 'NEVER'",
        )[0][0]
        pg_query(
            dsn,
            f"INSERT INTO packet_ceiling ({columns}) "
            f"SELECT {columns} FROM packet WHERE status = 'created'",
        )
        depth = int(pg_query(dsn, "SELECT count(*) FROM packet_ceiling")[0][0])
        result = loadgen(
            {
                "scenario": "pg_claim",
                "dsn": dsn,
                "table": "packet_ceiling",
                "clients": workers,
                "count": sizes.claim_next,
                "seconds": sizes.seconds,
            }
        )
        report.ceilings[f"claim:{label}:{workers}"] = result["ops_per_s"]
        report.add(
            Row(label, "ceiling: raw SKIP LOCKED claim", workers, result, notes=f"queue {depth}")
        )


def run_app_scenarios(
    report: Report,
    label: str,
    server: Process,
    pids: list[int],
    dsn: str,
    key: str,
    sizes: Sizes,
    *,
    create_clients: list[int],
    races: list[int],
    profile_dir: Path | None = None,
) -> None:
    """Create, lifecycle, contended claims and claim-next against a running app."""
    url = server.url
    for clients in create_clients:
        with profiled(pids[0], profile_dir if clients == 50 else None, f"{label}-create-c50"):
            result = app_loadgen(
                pids,
                {
                    "scenario": "post",
                    "url": url,
                    "key": key,
                    "expect": 201,
                    "clients": clients,
                    "count": sizes.create[clients],
                    "seconds": sizes.seconds,
                },
            )
        report.add(
            Row(
                label,
                "create",
                clients,
                result,
                ceiling=f"storage c={clients}",
                ceiling_ops=report.ceilings.get(f"storage:{clients}"),
                http_ops=report.ceilings.get(f"http:{label}:{clients}"),
                notes=_statuses(result),
            )
        )
    with profiled(pids[0], profile_dir, f"{label}-lifecycle-c10"):
        result = app_loadgen(
            pids,
            {
                "scenario": "lifecycle",
                "url": url,
                "key": key,
                "clients": 10,
                "count": sizes.lifecycle,
                "seconds": sizes.seconds,
            },
        )
    report.add(
        Row(
            label,
            "lifecycle (4 requests)",
            10,
            result,
            ceiling="storage c=10",
            ceiling_ops=report.ceilings.get("storage:10"),
            notes=_statuses(result),
        )
    )
    pg_query(dsn, "CREATE TABLE IF NOT EXISTS packet_ceiling (LIKE packet INCLUDING ALL)")
    measure_claim_ceilings(report, label, dsn, sizes)
    for racers in races:
        result = app_loadgen(
            pids,
            {
                "scenario": "race",
                "url": url,
                "key": key,
                "racers": racers,
                "packets": sizes.race[racers],
                "seconds": sizes.claim_seconds,
            },
        )
        double, unclaimed, events = double_claims(dsn, result["packets"])
        if events != result["claims"]:
            result["errors"] += abs(events - result["claims"])
        report.add(
            Row(
                label,
                f"claim race: {racers} on each packet",
                racers,
                result,
                ceiling=f"claim c={racers}",
                ceiling_ops=report.ceilings.get(f"claim:{label}:{racers}"),
                double=double,
                notes=f"{len(result['packets'])} packets, {result['claims']} won, "
                f"{unclaimed} unclaimed; {_statuses(result)}",
            )
        )
    result = app_loadgen(
        pids,
        {
            "scenario": "claim_next",
            "url": url,
            "key": key,
            "clients": 32,
            "count": sizes.claim_next,
            "seconds": sizes.claim_seconds,
        },
    )
    double, _unclaimed, events = double_claims(dsn, result["packets"])
    if events != result["claims"]:
        result["errors"] += abs(events - result["claims"])
    report.add(
        Row(
            label,
            "claim-next workers",
            32,
            result,
            ceiling="claim c=32",
            ceiling_ops=report.ceilings.get(f"claim:{label}:32"),
            double=double,
            notes=f"{result['claims']} claimed; {_statuses(result)}",
        )
    )


def memory_row(report: Report, label: str, idle: list[float], pids: list[int]) -> None:
    after = [rss_mb(pid) for pid in pids]
    report.add(
        Row(
            label,
            "memory: RSS per worker (MB)",
            len(pids),
            {"rss_idle": idle, "rss_after": after},
            notes="idle "
            + "/".join(f"{value:.0f}" for value in idle)
            + " -> after "
            + "/".join(f"{value:.0f}" for value in after),
        )
    )


def phase_serve(report: Report, sizes: Sizes, workdir: Path, profile_dir: Path | None) -> None:
    from handoffrail_server.keys.tokens import generate_key

    label = "serve x1"
    with pg_database() as (dsn, url):
        migrate(url)
        port = free_port()
        key = generate_key()
        env = server_env(url, key, port, workdir)
        base = f"http://127.0.0.1:{port}"
        measure_http_ceiling(
            report,
            label,
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.bare_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--proxy-headers",
                "--log-level",
                "warning",
            ],
            env,
            workdir,
            base,
            [1, 10, 50],
            sizes,
        )
        framework = [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.framework_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        measure_http_ceiling(report, label, framework, env, workdir, base, [10, 50], sizes)
        measure_pg_ceilings(report, dsn, sizes)
        for operation, cpu_ms in driver_cost.run(dsn, url, sizes.driver_ops):
            report.add(
                Row("in-process", f"db CPU: {operation}", 1, {"server_cpu_ms": cpu_ms}, notes="")
            )
        serve = [str(BIN / "handoffrail"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        with running("serve", serve, env, workdir, base) as server:
            pids = worker_pids(server, 1)
            time.sleep(1.0)
            idle = [rss_mb(pid) for pid in pids]
            run_app_scenarios(
                report,
                label,
                server,
                pids,
                dsn,
                key,
                sizes,
                create_clients=[1, 10, 50],
                races=[8, 32],
                profile_dir=profile_dir,
            )
            with running("worker", [str(BIN / "handoffrail"), "worker"], env, workdir) as worker:
                wait_for_log(worker, "worker.started")
                result = loadgen(
                    {
                        "scenario": "webhook",
                        "url": base,
                        "key": key,
                        "count": sizes.webhook,
                        "seconds": sizes.seconds,
                        "interval": 0.02,
                    }
                )
            report.add(
                Row(
                    label,
                    "webhook commit -> receiver",
                    1,
                    result,
                    notes=f"worker poll {WORKER_POLL_SECONDS}s; {result['ops']} delivered",
                )
            )
            memory_row(report, label, idle, pids)


def phase_gunicorn(report: Report, sizes: Sizes, workdir: Path) -> None:
    from handoffrail_server.keys.tokens import generate_key

    label = "gunicorn x2"
    with pg_database() as (dsn, url):
        migrate(url)
        port = free_port()
        key = generate_key()
        env = server_env(url, key, port, workdir)
        env["WEB_CONCURRENCY"] = "2"
        # no worker recycling while measuring (deploy/gunicorn.conf.py recycles every ~10,000
        # requests): per-worker CPU and RSS are read from the worker pids found at start
        env["GUNICORN_MAX_REQUESTS"] = "0"
        metrics_dir = workdir / f"prometheus-{port}"
        metrics_dir.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        base = f"http://127.0.0.1:{port}"
        gunicorn = [str(BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py"]
        measure_http_ceiling(
            report,
            label,
            [*gunicorn, "bench.bare_app:app"],
            env,
            workdir,
            base,
            [10, 50],
            sizes,
        )
        with running(
            "gunicorn", [*gunicorn, "handoffrail_server.asgi:app"], env, workdir, base
        ) as server:
            pids = worker_pids(server, 2)
            time.sleep(1.0)
            idle = [rss_mb(pid) for pid in pids]
            run_app_scenarios(
                report, label, server, pids, dsn, key, sizes, create_clients=[10, 50], races=[32]
            )
            memory_row(report, label, idle, pids)


def _sqlite_ceiling_table(path: Path) -> None:
    """`packet_ceiling`: the packet table's columns and indexes under another name."""
    connection = sqlite3.connect(path)
    try:
        (table_sql,) = connection.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'packet'"
        ).fetchone()
        connection.execute(
            re.sub(r'^CREATE TABLE "?packet"?', "CREATE TABLE packet_ceiling", table_sql)
        )
        indexes = connection.execute(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = 'packet' AND sql IS NOT NULL"
        ).fetchall()
        for name, index_sql in indexes:
            renamed = index_sql.replace(name, f"{name}_ceiling", 1)
            connection.execute(re.sub(r' ON "?packet"? ', " ON packet_ceiling ", renamed))
        connection.commit()
    finally:
        connection.close()


def phase_sqlite(report: Report, sizes: Sizes, workdir: Path) -> None:
    from handoffrail_server.keys.tokens import generate_key

    label = "sqlite x1"
    path = workdir / "bench.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate(url, "development")
    port = free_port()
    key = generate_key()
    env = server_env(url, key, port, workdir)
    env["HR_ENVIRONMENT"] = "development"  # SQLite is the development / embedded default
    base = f"http://127.0.0.1:{port}"
    serve = [str(BIN / "handoffrail"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    results: list[tuple[int, dict[str, Any]]] = []
    with running("serve-sqlite", serve, env, workdir, base):
        for clients, count in sizes.sqlite_create.items():
            results.append(
                (
                    clients,
                    loadgen(
                        {
                            "scenario": "post",
                            "url": base,
                            "key": key,
                            "expect": 201,
                            "clients": clients,
                            "count": count,
                            "seconds": sizes.seconds,
                        }
                    ),
                )
            )
    _sqlite_ceiling_table(path)
    ceiling = loadgen(
        {
            "scenario": "sqlite_insert",
            "path": str(path),
            "table": "packet_ceiling",
            "count": sizes.ceiling,
            "seconds": sizes.ceiling_seconds,
        }
    )
    report.ceilings["sqlite"] = ceiling["ops_per_s"]
    report.add(Row("sqlite", "ceiling: raw INSERT (sqlite3)", 1, ceiling))
    for clients, result in results:
        report.add(
            Row(
                label,
                "create",
                clients,
                result,
                ceiling="sqlite insert",
                ceiling_ops=ceiling["ops_per_s"],
                notes=f"{result['ops_per_s'] / ORIGINAL_SQLITE_CREATES_PER_S:.1f}x original; "
                + _statuses(result),
            )
        )


# -- output ------------------------------------------------------------------------------------

HEADER = (
    "server",
    "scenario",
    "c",
    "ops",
    "ops/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "err",
    "ceiling",
    "÷ceil",
    "÷HTTP",
    "double",
    "cli CPU",
    "srv CPU ms/op",
    "notes",
)


def table(report: Report) -> str:
    lines: list[list[str]] = []
    for row in report.rows:
        result = row.result
        memory = "rss_idle" in result or "ops" not in result  # memory and in-process rows
        lines.append(
            [
                row.server,
                row.scenario,
                str(row.clients),
                "-" if memory else str(result.get("ops", 0)),
                "-" if memory else _fmt(row.ops_per_s, 0),
                _fmt(result.get("p50_ms")),
                _fmt(result.get("p95_ms")),
                _fmt(result.get("p99_ms")),
                "-" if memory else str(result.get("errors", 0)),
                f"{row.ceiling} {row.ceiling_ops:.0f}/s" if row.ceiling_ops else "",
                _fmt(row.ratio, 3),
                _fmt(row.http_ratio, 2),
                "-" if row.double is None else str(row.double),
                "-" if memory else f"{100 * float(result.get('client_cpu', 0)):.0f}%",
                _fmt(result.get("server_cpu_ms"), 2),
                row.notes,
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(HEADER)]

    def render(cells: list[str] | tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)) + " |"

    out = [render(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(render(line) for line in lines)
    return "\n".join(out)


def _find(report: Report, server: str, scenario: str, clients: int) -> Row | None:
    for row in report.rows:
        if row.server == server and row.scenario.startswith(scenario) and row.clients == clients:
            return row
    return None


def targets(report: Report) -> list[str]:
    """The issue's targets against this run (informational: timing never fails the run)."""
    out: list[str] = []

    def check(name: str, ok: bool, value: str) -> None:
        out.append(f"  [{'PASS' if ok else 'MISS'}] {name}: {value}")

    create = _find(report, "serve x1", "create", 50)
    if create and create.ratio is not None:
        check(
            "PG create c=50 >= 0.25 x storage ceiling", create.ratio >= 0.25, f"{create.ratio:.3f}"
        )
        p99 = float(create.result.get("p99_ms") or 0)
        check("PG create c=50 p99 < 50 ms", p99 < 50, f"{p99:.1f} ms")
    life = _find(report, "serve x1", "lifecycle", 10)
    if life and life.ratio is not None:
        check(
            "PG lifecycle c=10 >= 0.08 x storage ceiling", life.ratio >= 0.08, f"{life.ratio:.3f}"
        )
    nxt = _find(report, "serve x1", "claim-next", 32)
    if nxt and nxt.ratio is not None:
        check("claim-next x32 >= 0.25 x claim ceiling", nxt.ratio >= 0.25, f"{nxt.ratio:.3f}")
    claim_rows = [row for row in report.rows if row.double is not None]
    doubles = sum(row.double or 0 for row in claim_rows)
    claims = sum(int(row.result.get("claims", 0)) for row in claim_rows)
    attempts = sum(int(row.result.get("ops", 0)) for row in claim_rows)
    check(
        "zero double claims",
        doubles == 0,
        f"{doubles} double over {claims} claims won ({attempts} claim requests)",
    )
    if claim_rows:
        check(
            "contended claims >= 10,000 requests",
            attempts >= 10_000,
            f"{attempts} claim requests, {claims} won",
        )
    errors = sum(
        int(row.result.get("errors", 0)) for row in report.rows if "rss_idle" not in row.result
    )
    check("no errors", errors == 0, str(errors))
    sqlite_rows = [row for row in report.rows if row.server == "sqlite x1"]
    if sqlite_rows:
        best = max(sqlite_rows, key=lambda row: row.ops_per_s)
        check(
            f"SQLite create >= 5 x original ({5 * ORIGINAL_SQLITE_CREATES_PER_S:.0f}/s)",
            best.ops_per_s >= 5 * ORIGINAL_SQLITE_CREATES_PER_S,
            f"{best.ops_per_s:.0f}/s = {_fmt(best.ratio, 3)} x raw SQLite ceiling",
        )
    rss = [
        value
        for row in report.rows
        if "rss_after" in row.result
        for value in row.result["rss_after"]
    ]
    if rss:
        check("RSS < 150 MB per worker", max(rss) < 150, f"max {max(rss):.0f} MB")
    return out


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.node()}: {os.cpu_count()} cpu ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, a few seconds")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--profile", type=Path, help="py-spy the 1-process server into this dir")
    parser.add_argument("--only", default="serve,gunicorn,sqlite", help="phases to run")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    phases = {name.strip() for name in args.only.split(",")}
    report = Report()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="handoffrail-bench-") as tmp:
        workdir = Path(tmp)
        if "serve" in phases:
            print("bench: PostgreSQL, one process (handoffrail serve) ...", flush=True)
            phase_serve(report, sizes, workdir, args.profile)
        if "gunicorn" in phases:
            print("bench: PostgreSQL, Gunicorn + 2 Uvicorn workers ...", flush=True)
            phase_gunicorn(report, sizes, workdir)
        if "sqlite" in phases:
            print("bench: SQLite, one process ...", flush=True)
            phase_sqlite(report, sizes, workdir)
    elapsed = time.monotonic() - started
    mode = "smoke (tiny counts: not a measurement)" if args.smoke else "full"
    print()
    print(f"HandoffRail benchmark, {mode}, {elapsed:.0f}s on {machine()}")
    print(table(report))
    print("targets (issue 10):")
    for line in targets(report):
        print(line)
    doubles = sum(row.double or 0 for row in report.rows)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "mode": mode,
                    "machine": machine(),
                    "seconds": elapsed,
                    "ceilings": report.ceilings,
                    "double_claims": doubles,
                    "rows": [
                        {
                            "server": row.server,
                            "scenario": row.scenario,
                            "clients": row.clients,
                            "ratio": row.ratio,
                            "double": row.double,
                            **{k: v for k, v in row.result.items() if k != "packets"},
                        }
                        for row in report.rows
                    ],
                },
                indent=2,
            )
        )
    return 1 if doubles else 0
