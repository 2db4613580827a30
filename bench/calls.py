"""Python function calls per request, counted in-process: a deterministic profile.

On a shared VM the CPU speed drifts by tens of percent between runs of one build, so small
improvements drown in timing noise. The number of Python calls a request makes does not drift:
this drives the real app (the same `create_app`, a fresh migrated database) through its ASGI
callable without sockets, under cProfile, and prints calls per operation, the libraries they
are made in, and the busiest functions. Round 3 of docs/performance.md was steered with it.

    python -m bench.calls                      # create on SQLite, 300 requests
    python -m bench.calls --scenario lifecycle --database postgres --count 200

PostgreSQL comes from `HR_BENCH_PG_DSN` / `HR_TEST_PG_DSN` like the harness (a database of its
own, dropped afterwards). Not a timing: the CPU figure it prints includes cProfile's overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from bench import processes
from bench.loadgen import packet_body
from bench.processes import migrate, pg_database, server_env

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Driver:
    """Requests through an ASGI app's callable, with the app's lifespan running."""

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.key = key.encode()
        self.packets: list[str] = []

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never disconnects
            raise AssertionError("unreachable")

        status: list[int] = []
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        headers = [
            (b"host", b"127.0.0.1"),
            (b"x-api-key", self.key),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        await self.app(scope, receive, send)
        return status[0], b"".join(chunks)


async def _create(driver: Driver, index: int) -> str:
    status, body = await driver.request(
        "POST", "/api/v1/packets", json.dumps(packet_body(index)).encode()
    )
    if status != 201:
        raise RuntimeError(f"create answered {status}: {body[:300]!r}")
    packet_id: str = json.loads(body)["id"]
    return packet_id


async def _lifecycle(driver: Driver, index: int) -> None:
    packet_id = await _create(driver, index)
    claim = json.dumps({"agent_id": f"worker-{index % 10}", "agent_name": "Worker"}).encode()
    steps = [
        ("POST", f"/api/v1/packets/{packet_id}/claim", claim),
        ("PATCH", f"/api/v1/packets/{packet_id}", b'{"status":"in_progress"}'),
        ("PATCH", f"/api/v1/packets/{packet_id}", b'{"status":"completed"}'),
    ]
    for method, path, body in steps:
        status, answer = await driver.request(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path} answered {status}: {answer[:300]!r}")


async def _claim_next(driver: Driver, index: int) -> None:
    body = json.dumps({"agent_id": f"worker-{index % 32}", "agent_name": "Worker"}).encode()
    status, answer = await driver.request("POST", "/api/v1/packets/claim-next", body)
    if status != 200:
        raise RuntimeError(f"claim-next answered {status}: {answer[:300]!r}")


async def _get(driver: Driver, index: int) -> None:
    packet_id = driver.packets[index % len(driver.packets)]
    status, answer = await driver.request("GET", f"/api/v1/packets/{packet_id}")
    if status != 200:
        raise RuntimeError(f"get answered {status}: {answer[:300]!r}")


SCENARIOS: dict[str, Callable[[Driver, int], Awaitable[Any]]] = {
    "create": _create,
    "lifecycle": _lifecycle,
    "claim_next": _claim_next,
    "get": _get,
}
#: scenarios whose operations use packets created (untimed) beforehand
NEEDS_PACKETS = {"claim_next", "get"}


async def _run(
    app: Any, key: str, scenario: str, count: int, clients: int, *, profiled: bool = True
) -> dict[str, Any]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()
        elif message["type"] == "lifespan.startup.failed":
            raise RuntimeError(message.get("message", "start-up failed"))

    await queue.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, queue.get, lifespan_send)
    )
    await started.wait()
    driver = Driver(app, key)
    work = SCENARIOS[scenario]
    warm_up = min(20, count)
    if scenario in NEEDS_PACKETS:
        driver.packets = await asyncio.gather(
            *(_create(driver, index) for index in range(count + warm_up))
        )
    for index in range(warm_up):  # warm caches, prepared statements, pools
        await work(driver, index)

    async def client(offset: int) -> None:
        for index in range(offset, count, clients):
            await work(driver, index)

    profile = cProfile.Profile()
    cpu, loop_cpu, wall = time.process_time(), time.thread_time(), time.perf_counter()
    if profiled:
        profile.enable()
    await asyncio.gather(*(client(offset) for offset in range(clients)))
    if profiled:
        profile.disable()
    cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
    wall = time.perf_counter() - wall
    await queue.put({"type": "lifespan.shutdown"})
    await lifespan
    stats = pstats.Stats(profile) if profiled else None
    return {"stats": stats, "cpu": cpu, "loop_cpu": loop_cpu, "wall": wall}


def _where(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if "handoffrail_server/" in filename:
        return "handoffrail_server"
    return "builtins" if filename == "~" else "stdlib/other"


def report(stats: pstats.Stats, count: int, cpu: float, top: int) -> str:
    """Calls per operation: total, by library, and the busiest functions."""
    by_place: collections.Counter[str] = collections.Counter()
    functions: list[tuple[float, str]] = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, name), (_primitive, calls, _own, _total, _callers) in raw.items():
        by_place[_where(filename)] += calls
        short = filename.split("site-packages/")[-1].split("src/")[-1]
        functions.append((calls / count, f"{short}:{line} {name}"))
    total: int = stats.total_calls  # type: ignore[attr-defined]
    lines = [
        f"operations: {count}",
        f"python calls per operation: {total / count:.0f}",
        f"CPU per operation under cProfile: {1000 * cpu / count:.2f} ms (not a timing)",
        "by library (calls per operation):",
    ]
    lines += [f"  {calls / count:8.1f}  {place}" for place, calls in by_place.most_common()]
    lines.append(f"busiest {top} functions (calls per operation):")
    lines += [f"  {calls:8.1f}  {where}" for calls, where in sorted(functions, reverse=True)[:top]]
    return "\n".join(lines)


@contextlib.contextmanager
def _database(kind: str, workdir: Path) -> Iterator[tuple[str, str]]:
    """(database URL, HR_ENVIRONMENT) of a fresh, migrated database."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'calls.db'}"
        migrate(url, "development")
        yield url, "development"
        return
    with pg_database() as (_dsn, url):
        migrate(url)
        yield url, "staging"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.calls", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="create")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--dump",
        type=Path,
        help="also write the raw profile here (pstats; read it with"
        " `python -m pstats FILE` for callers and cumulative times)",
    )
    processes.add_settings_option(parser)
    parser.add_argument(
        "--timing",
        action="store_true",
        help="no profiler, uvloop: print only CPU ms per operation, the event loop thread's"
        " share and the in-process rate (A/B figures, not counts)",
    )
    args = parser.parse_args(argv)
    processes.apply_settings(parser, args.set)
    from handoffrail_server.keys.tokens import generate_key

    with tempfile.TemporaryDirectory() as scratch, _database(args.database, Path(scratch)) as db:
        url, environment = db
        key = generate_key()
        env = server_env(url, key, 8000, Path(scratch))
        env["HR_ENVIRONMENT"] = environment
        saved = dict(os.environ)
        os.environ.update({name: value for name, value in env.items() if name.startswith("HR_")})
        try:
            from handoffrail_server.main import create_app

            run = _run(
                create_app(), key, args.scenario, args.count, args.clients, profiled=not args.timing
            )
            if args.timing:
                import uvloop

                result = uvloop.run(run)
            else:
                result = asyncio.run(run)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    if args.timing:
        cpu_ms = 1000 * result["cpu"] / args.count
        loop_ms = 1000 * result["loop_cpu"] / args.count
        rate = args.count / result["wall"]
        sys.stdout.write(
            f"{args.scenario} on {args.database}: {cpu_ms:.3f} ms CPU per operation"
            f" ({loop_ms:.3f} ms in the event loop's thread; {rate:.0f}/s in-process)\n"
        )
        return 0
    if args.dump:
        result["stats"].dump_stats(args.dump)
    sys.stdout.write(report(result["stats"], args.count, result["cpu"], args.top) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
