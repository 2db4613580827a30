"""Processes and throw-away databases of the benchmark: start, wait, stop, load, measure."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_ADMIN_DSN = os.environ.get(
    "HR_BENCH_PG_DSN",
    os.environ.get("HR_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
)
REDIS_URL = os.environ.get("HR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
START_TIMEOUT = 60.0
WORKER_POLL_SECONDS = 0.05


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


#: `HR_*` settings given with `bench --set NAME=VALUE`, applied to every server the run starts
SERVER_OVERRIDES: dict[str, str] = {}


def parse_settings(items: list[str]) -> dict[str, str]:
    """`NAME=VALUE` pairs of server settings; only `HR_*` names (anything else is a typo)."""
    overrides: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or not name.startswith("HR_") or name == "HR_":
            raise ValueError(f"expected HR_NAME=VALUE, got {item!r}")
        overrides[name] = value
    return overrides


def add_settings_option(parser: argparse.ArgumentParser) -> None:
    """`--set HR_NAME=VALUE` (repeatable) on a harness command line."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="HR_NAME=VALUE",
        help="a server setting for this run (repeatable), e.g. HR_FAST_LANES=false for an A/B",
    )


def apply_settings(parser: argparse.ArgumentParser, items: list[str]) -> None:
    """Make `--set` values `SERVER_OVERRIDES`, or stop with the parser's usage error."""
    try:
        SERVER_OVERRIDES.update(parse_settings(items))
    except ValueError as error:
        parser.error(str(error))


def server_env(database_url: str, key: str, port: int, workdir: Path) -> dict[str, str]:
    """The server's environment: staging (JSON logs at info), limits out of the way, then
    `SERVER_OVERRIDES`."""
    env = clean_env(
        HR_ENVIRONMENT="staging",
        HR_SECRET_KEY=secrets.token_urlsafe(48),
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
    env.update(SERVER_OVERRIDES)
    return env


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


@dataclass(frozen=True)
class PgCpu:
    """CPU of a local PostgreSQL cluster: its postmaster, every live child (backends, WAL
    writer, checkpointer, autovacuum) and the children it has already reaped (`cutime` and
    `cstime` of the postmaster), so a backend that exits during a scenario still counts."""

    postmaster: int

    def seconds(self) -> float:
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(stat.parent.name)
            if pid == self.postmaster:
                total += sum(int(value) for value in fields[11:15])  # own + reaped children
            elif int(fields[1]) == self.postmaster:
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")


def pg_cpu(dsn: str) -> PgCpu | None:
    """The CPU meter of the cluster behind `dsn`, or None when it is not on this machine (its
    processes are not in this /proc)."""
    import asyncpg

    def parent(pid: int) -> int | None:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        parents = [line.split()[1] for line in status.splitlines() if line.startswith("PPid:")]
        return int(parents[0]) if parents else None

    async def postmaster() -> int | None:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:  # read while the backend lives: its parent is the postmaster
            return parent(int(await connection.fetchval("SELECT pg_backend_pid()")))
        finally:
            await connection.close()

    pid = asyncio.run(postmaster())
    return None if pid is None else PgCpu(pid)


def app_loadgen(pids: list[int], spec: dict[str, Any], db: PgCpu | None = None) -> dict[str, Any]:
    """`loadgen`, plus the server's own CPU per operation (robust to a shared machine) and,
    with `db`, the database's (`db_cpu_ms`)."""
    before = cpu_seconds(pids)
    db_before = db.seconds() if db else 0.0
    result = loadgen(spec)
    ops = int(result.get("ops", 0))
    if pids:
        result["server_cpu_ms"] = 1000 * (cpu_seconds(pids) - before) / ops if ops else None
    if db is not None and ops:
        result["db_cpu_ms"] = 1000 * (db.seconds() - db_before) / ops
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
    env = clean_env(
        HR_DATABASE_URL=database_url,
        HR_ENVIRONMENT=environment,
        HR_SECRET_KEY=secrets.token_urlsafe(48),  # staging refuses a weak one
    )
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


def settle_claims(result: dict[str, Any], counted: tuple[int, int, int]) -> tuple[int, int]:
    """(double, unclaimed) of a claim row from what `double_claims` counted in the database;
    every difference between the `claimed` events there and the claims the client saw is an
    error of the row."""
    double, unclaimed, events = counted
    if events != result["claims"]:
        result["errors"] += abs(events - result["claims"])
    return double, unclaimed


def sqlite_double_claims(path: Path, packet_ids: list[str]) -> tuple[int, int, int]:
    """`double_claims` in the SQLite file at `path` (ids stored as 32 hex digits)."""
    if not packet_ids:
        return 0, 0, 0
    counts: dict[str, int] = {uuid.UUID(value).hex: 0 for value in packet_ids}
    with contextlib.closing(sqlite3.connect(path)) as connection:
        for (packet_id,) in connection.execute(
            "SELECT packet_id FROM packet_event WHERE event_type = 'claimed'"
        ):
            if packet_id in counts:
                counts[packet_id] += 1
    values = counts.values()
    return sum(n > 1 for n in values), sum(n == 0 for n in values), sum(values)


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
