"""The harness's SQLite phase (the embedded default, one process): create at 10 and 50
clients, the lifecycle at 10 and 32 claim-next workers, against a raw SQLite insert ceiling
taken on a copy of the packet table in the same file."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from bench import processes
from bench.processes import (
    BIN,
    free_port,
    loadgen,
    migrate,
    running,
    server_env,
    settle_claims,
    sqlite_double_claims,
)
from bench.report import ORIGINAL_SQLITE_CREATES_PER_S, Report, Row, Sizes, status_counts


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


def embedded_env(database_url: str, key: str, port: int, workdir: Path) -> dict[str, str]:
    """The SQLite server's environment: the embedded default as README's first command starts
    it (development, no Redis), as the original server's SQLite figure was taken; a Redis URL
    given with `--set` still applies."""
    env = server_env(database_url, key, port, workdir)
    env["HR_ENVIRONMENT"] = "development"
    for name in ("HR_REDIS_URL", "HR_REDIS_PREFIX", "REDIS_URL"):
        env.pop(name, None)
    env.update(
        {name: value for name, value in processes.SERVER_OVERRIDES.items() if "REDIS" in name}
    )
    return env


def phase_sqlite(report: Report, sizes: Sizes, workdir: Path) -> None:
    from handoffrail_server.keys.tokens import generate_key

    label = "sqlite x1"
    path = workdir / "bench.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate(url, "development")
    port = free_port()
    key = generate_key()
    env = embedded_env(url, key, port, workdir)
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
        lifecycle = loadgen(
            {
                "scenario": "lifecycle",
                "url": base,
                "key": key,
                "clients": 10,
                "count": sizes.lifecycle,
                "seconds": sizes.seconds,
            }
        )
        claim_next = loadgen(  # the packets the creates left in the queue
            {
                "scenario": "claim_next",
                "url": base,
                "key": key,
                "clients": 32,
                "count": min(sizes.claim_next, sum(sizes.sqlite_create.values())),
                "seconds": sizes.claim_seconds,
            }
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
                + status_counts(result),
            )
        )
    report.add(
        Row(
            label,
            "lifecycle (4 requests)",
            10,
            lifecycle,
            ceiling="sqlite insert",
            ceiling_ops=ceiling["ops_per_s"],
            notes=status_counts(lifecycle),
        )
    )
    double, _unclaimed = settle_claims(
        claim_next, sqlite_double_claims(path, claim_next["packets"])
    )
    report.add(
        Row(
            label,
            "claim-next workers",
            32,
            claim_next,
            double=double,
            notes=f"{claim_next['claims']} claimed; {status_counts(claim_next)}",
        )
    )
