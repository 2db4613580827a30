"""The benchmark harness (issue 10): servers, load, ceilings and one table, in one run.

    python -m bench [--smoke] [--json PATH] [--profile DIR] [--only serve,gunicorn,sqlite]

1. PostgreSQL, one process (`handoffrail serve`): ceilings first (a bare ASGI app under Uvicorn,
   raw asyncpg INSERTs of the packet row at 1/10/50 connections, raw SKIP LOCKED claims by 8 and 32
   workers), then create at 1/10/50 clients, the full lifecycle at 10, 8 and 32 racers on the same
   packets, 32 claim-next workers, webhook latency (a local receiver + `handoffrail worker`), RSS.
2. PostgreSQL, Gunicorn + Uvicorn workers (`WEB_CONCURRENCY=2`, deploy/gunicorn.conf.py): the same
   against the bare app under Gunicorn.
3. SQLite (the embedded default, bench/sqlite_phase.py), one process: create vs a raw SQLite
   insert ceiling, the lifecycle at 10 clients and 32 claim-next workers (double claims counted
   in the file).

Load comes from `bench.loadgen` in a separate process on loopback. Each database is a throw-away
one; every process started here is stopped in `finally`; every wait and loop is bounded. Double
claims are counted from the database: each packet's history must hold exactly one `claimed` event.
Exit status 1 on any double claim (correctness), never on timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench import driver_cost, processes
from bench.processes import (
    BIN,
    WORKER_POLL_SECONDS,
    PgCpu,
    Process,
    app_loadgen,
    double_claims,
    free_port,
    loadgen,
    migrate,
    pg_cpu,
    pg_database,
    pg_query,
    profiled,
    rss_mb,
    running,
    server_env,
    settle_claims,
    wait_for_log,
    worker_pids,
)
from bench.report import (
    FULL,
    SMOKE,
    Report,
    Row,
    Sizes,
    budgets,
    machine,
    status_counts,
    table,
    targets,
)
from bench.sqlite_phase import phase_sqlite


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


def measure_pg_ceilings(report: Report, dsn: str, sizes: Sizes, db: PgCpu | None) -> None:
    """Storage and claim ceilings in a copy of the packet table (same columns and indexes)."""
    pg_query(dsn, "CREATE TABLE IF NOT EXISTS packet_ceiling (LIKE packet INCLUDING ALL)")
    for clients in (1, 10, 50):
        result = app_loadgen(
            [],
            {
                "scenario": "pg_insert",
                "dsn": dsn,
                "table": "packet_ceiling",
                "clients": clients,
                "count": sizes.ceiling,
                "seconds": sizes.ceiling_seconds,
            },
            db,
        )
        report.ceilings[f"storage:{clients}"] = result["ops_per_s"]
        report.add(Row("postgres", "ceiling: raw INSERT (asyncpg)", clients, result))


def measure_claim_ceilings(
    report: Report, label: str, dsn: str, sizes: Sizes, db: PgCpu | None
) -> None:
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
        result = app_loadgen(
            [],
            {
                "scenario": "pg_claim",
                "dsn": dsn,
                "table": "packet_ceiling",
                "clients": workers,
                "count": sizes.claim_next,
                "seconds": sizes.seconds,
            },
            db,
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
    db: PgCpu | None,
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
                db,
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
                notes=status_counts(result),
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
            db,
        )
    report.add(
        Row(
            label,
            "lifecycle (4 requests)",
            10,
            result,
            ceiling="storage c=10",
            ceiling_ops=report.ceilings.get("storage:10"),
            notes=status_counts(result),
        )
    )
    pg_query(dsn, "CREATE TABLE IF NOT EXISTS packet_ceiling (LIKE packet INCLUDING ALL)")
    measure_claim_ceilings(report, label, dsn, sizes, db)
    for racers in races:
        seed = {"url": url, "key": key, "packets": sizes.race[racers], "seconds": sizes.seconds}
        seeded = loadgen({"scenario": "seed", **seed})  # not in the row's CPU figures
        result = app_loadgen(
            pids,
            {
                "scenario": "race",
                "url": url,
                "key": key,
                "racers": racers,
                "ids": seeded["ids"],
                "seconds": sizes.claim_seconds,
            },
            db,
        )
        double, unclaimed = settle_claims(result, double_claims(dsn, result["packets"]))
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
                f"{unclaimed} unclaimed; {status_counts(result)}",
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
        db,
    )
    double, _unclaimed = settle_claims(result, double_claims(dsn, result["packets"]))
    report.add(
        Row(
            label,
            "claim-next workers",
            32,
            result,
            ceiling="claim c=32",
            ceiling_ops=report.ceilings.get(f"claim:{label}:32"),
            double=double,
            notes=f"{result['claims']} claimed; {status_counts(result)}",
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
        db = pg_cpu(dsn)
        measure_pg_ceilings(report, dsn, sizes, db)
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
                db=db,
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
                report,
                label,
                server,
                pids,
                dsn,
                key,
                sizes,
                create_clients=[10, 50],
                races=[32],
                db=pg_cpu(dsn),
            )
            memory_row(report, label, idle, pids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, a few seconds")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--profile", type=Path, help="py-spy the 1-process server into this dir")
    parser.add_argument("--only", default="serve,gunicorn,sqlite", help="phases to run")
    processes.add_settings_option(parser)
    args = parser.parse_args(argv)
    processes.apply_settings(parser, args.set)
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
    if processes.SERVER_OVERRIDES:
        settings = " ".join(f"{name}={value}" for name, value in processes.SERVER_OVERRIDES.items())
        print(f"server settings changed for this run: {settings}")
    print(table(report))
    print("targets (issue 10):")
    for line in targets(report):
        print(line)
    lines = budgets(report)
    if lines:
        print("machine budget (CPU per operation of the server, PostgreSQL and the load client):")
        for line in lines:
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
