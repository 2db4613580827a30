"""Operator commands: `handoffrail backup PATH`, `restore PATH`, `smoke URL`, `migrate history`.

- backup/restore: PostgreSQL through `pg_dump -Fc` / `pg_restore` (the URL's credentials passed in
  libpq form, the password through `PGPASSWORD`, never on the command line); SQLite through the
  sqlite3 online backup API. Restore refuses a database that already has tables unless `--force`.
- smoke: the post-deploy check every platform runbook uses; exit 1 when any check fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import text

from handoffrail_server.db import migrations
from handoffrail_server.db.engine import create_engine
from handoffrail_server.settings import Settings, SettingsError, load_settings, redact_url

console = Console()
errors = Console(stderr=True)

PG_TOOL_TIMEOUT_SECONDS = 3600
_VERSION = re.compile(r"(\d+)(?:\.(\d+))?")


class OpsError(Exception):
    """An operator command cannot go on; the message says why and what to do."""


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        errors.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


# --------------------------------------------------------------------------- database URLs


@dataclass(frozen=True)
class LibpqTarget:
    """A PostgreSQL URL split for libpq tools: a password-free URI plus the password."""

    uri: str
    password: str | None


def libpq_target(database_url: str) -> LibpqTarget:
    """Translate our SQLAlchemy URL (`postgresql+asyncpg://`, `ssl=`) to libpq's form.

    The password is returned separately (for `PGPASSWORD`) so it never appears in `ps`.
    """
    parts = urlsplit(database_url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in {"postgresql", "postgres"}:
        raise OpsError(f"not a PostgreSQL URL: {redact_url(database_url)}")
    password = unquote(parts.password) if parts.password is not None else None
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    query = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "ssl":
            query.append(("sslmode", value))
        elif name in {"prepared_statement_cache_size", "statement_cache_size"}:
            continue  # asyncpg/SQLAlchemy options, unknown to libpq
        else:
            query.append((name, value))
    uri = urlunsplit(("postgresql", netloc, parts.path, urlencode(query), ""))
    return LibpqTarget(uri=uri, password=password)


def sqlite_path(database_url: str) -> Path:
    """The file of a `sqlite+aiosqlite:///path` URL."""
    parts = database_url.split("///", 1)
    if len(parts) != 2 or not parts[1] or parts[1].startswith(":memory:"):
        raise OpsError(f"not a SQLite file URL: {database_url}")
    return Path(parts[1].split("?", 1)[0])


def _pg_env(target: LibpqTarget) -> dict[str, str]:
    env = dict(os.environ)
    if target.password is not None:
        env["PGPASSWORD"] = target.password
    return env


def _tool(name: str, pg_bin: Path | None) -> str:
    if pg_bin is not None:
        candidate = pg_bin / name
        if candidate.is_file():
            return str(candidate)
        raise OpsError(f"{name} not found in {pg_bin}")
    found = shutil.which(name)
    if found is None:
        raise OpsError(
            f"{name} not found on PATH; install the PostgreSQL client (same major version as the "
            "server or newer) or pass --pg-bin"
        )
    return found


def _client_major(tool: str) -> int:
    output = subprocess.run(  # noqa: S603 - a resolved binary path, fixed arguments
        [tool, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    match = _VERSION.search(output.rsplit(")", 1)[-1]) or _VERSION.search(output)
    if match is None:
        raise OpsError(f"cannot read the version of {tool}: {output.strip()!r}")
    return int(match.group(1))


async def _server_state(database_url: str) -> tuple[int, int, str | None]:
    """(server major version or 0 on SQLite, number of user tables, migration revision)."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                version = (await connection.execute(text("SHOW server_version_num"))).scalar_one()
                major = int(str(version)) // 10000
                tables = (
                    await connection.execute(
                        text(
                            "SELECT count(*) FROM information_schema.tables WHERE table_schema "
                            "NOT IN ('pg_catalog', 'information_schema') "
                            "AND table_schema NOT LIKE 'pg_toast%'"
                        )
                    )
                ).scalar_one()
            else:
                major = 0
                tables = (
                    await connection.execute(
                        text(
                            "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                            "AND name NOT LIKE 'sqlite_%'"
                        )
                    )
                ).scalar_one()
        revision = await migrations.current_revision(engine) if tables else None
        return major, int(tables), revision
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- progress


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=errors,
        transient=False,
    )


def _run_with_progress(
    command: list[str], env: dict[str, str], description: str, watch: Path | None
) -> None:
    """Run a PostgreSQL tool, showing elapsed time (and the dump's size as it grows)."""
    with _progress() as progress:
        task = progress.add_task(description, total=None)
        process = subprocess.Popen(  # noqa: S603 - resolved binary, arguments we build
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + PG_TOOL_TIMEOUT_SECONDS
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait(timeout=30)
                raise OpsError(f"{Path(command[0]).name} timed out")
            if watch is not None and watch.exists():
                size = watch.stat().st_size
                progress.update(task, description=f"{description} ({size / 1_048_576:.1f} MiB)")
            time.sleep(0.1)
        progress.update(task, total=1, completed=1)
    stderr = process.stderr.read() if process.stderr else ""
    if process.returncode != 0:
        raise OpsError(f"{Path(command[0]).name} failed ({process.returncode}): {stderr.strip()}")


def _sqlite_copy(source: sqlite3.Connection, target: sqlite3.Connection, description: str) -> None:
    with _progress() as progress:
        task = progress.add_task(description, total=None)

        def report(_status: int, remaining: int, total: int) -> None:
            progress.update(task, total=total, completed=total - remaining)

        source.backup(target, pages=64, progress=report)
        progress.update(task, total=1, completed=1)


# --------------------------------------------------------------------------- backup / restore


def backup_database(database_url: str, path: Path, *, pg_bin: Path | None = None) -> str:
    """Write a backup of the database to `path`; returns a one-line summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if database_url.startswith("sqlite"):
        source_file = sqlite_path(database_url)
        if not source_file.is_file():
            raise OpsError(f"SQLite database {source_file} does not exist")
        source = sqlite3.connect(f"file:{source_file}?mode=ro", uri=True)
        target = sqlite3.connect(path)
        try:
            _sqlite_copy(source, target, f"backing up {source_file.name}")
        finally:
            target.close()
            source.close()
        return f"SQLite backup written to {path} ({path.stat().st_size} bytes)"
    major, _tables, _revision = asyncio.run(_server_state(database_url))
    pg_dump = _tool("pg_dump", pg_bin)
    client = _client_major(pg_dump)
    if client < major:
        raise OpsError(
            f"pg_dump {client} cannot dump a PostgreSQL {major} server; use a client of version "
            f"{major} or newer (--pg-bin DIR), e.g. the postgres:{major} image's"
        )
    target_url = libpq_target(database_url)
    command = [
        pg_dump,
        "--format=custom",
        "--no-owner",
        "--no-privileges",
        f"--file={path}",
        f"--dbname={target_url.uri}",
    ]
    _run_with_progress(command, _pg_env(target_url), "pg_dump", path)
    return f"PostgreSQL backup (pg_dump -Fc) written to {path} ({path.stat().st_size} bytes)"


def restore_database(
    database_url: str, path: Path, *, force: bool = False, pg_bin: Path | None = None
) -> str:
    """Restore `path` into the database; refuses one that has tables unless `force`."""
    if not path.is_file():
        raise OpsError(f"backup file {path} does not exist")
    if database_url.startswith("sqlite"):
        target_file = sqlite_path(database_url)
        if target_file.exists() and not force:
            _major, tables, _revision = asyncio.run(_server_state(database_url))
            if tables:
                raise OpsError(
                    f"{target_file} already has {tables} table(s); pass --force to overwrite it"
                )
        target_file.parent.mkdir(parents=True, exist_ok=True)
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        target = sqlite3.connect(target_file)
        try:
            _sqlite_copy(source, target, f"restoring {path.name}")
        finally:
            target.close()
            source.close()
        return f"restored {path} into {target_file}"
    _major, tables, _revision = asyncio.run(_server_state(database_url))
    if tables and not force:
        raise OpsError(
            f"the target database already has {tables} table(s); pass --force to replace them "
            "(pg_restore --clean)"
        )
    target_url = libpq_target(database_url)
    command = [
        _tool("pg_restore", pg_bin),
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--single-transaction",
        f"--dbname={target_url.uri}",
    ]
    if tables:
        command[1:1] = ["--clean", "--if-exists"]
    command.append(str(path))
    _run_with_progress(command, _pg_env(target_url), "pg_restore", None)
    return f"restored {path} into {redact_url(database_url)}"


def backup(
    path: Annotated[Path, typer.Argument(help="Where to write the backup file.")],
    pg_bin: Annotated[
        Path | None, typer.Option(help="Directory of pg_dump (default: PATH).")
    ] = None,
) -> None:
    """Back up the database (PostgreSQL: pg_dump -Fc; SQLite: online backup API)."""
    settings = _settings()
    try:
        console.print(backup_database(settings.database_url, path, pg_bin=pg_bin))
    except OpsError as exc:
        errors.print(f"[red]backup failed:[/red] {exc}")
        raise typer.Exit(1) from None


def restore(
    path: Annotated[Path, typer.Argument(help="A file written by `handoffrail backup`.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace a database that already has tables.")
    ] = False,
    pg_bin: Annotated[
        Path | None, typer.Option(help="Directory of pg_restore (default: PATH).")
    ] = None,
) -> None:
    """Restore a backup into the configured database (refuses a non-empty one without --force)."""
    settings = _settings()
    try:
        console.print(restore_database(settings.database_url, path, force=force, pg_bin=pg_bin))
    except OpsError as exc:
        errors.print(f"[red]restore failed:[/red] {exc}")
        raise typer.Exit(1) from None


def migrate_history() -> None:
    """List the migration scripts, newest first (no database needed)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrations.alembic_config("sqlite://"))
    table = Table("revision", "down", "message")
    for revision in script.walk_revisions():
        down = revision.down_revision
        table.add_row(
            revision.revision,
            ", ".join(down) if isinstance(down, tuple) else str(down or "-"),
            (revision.doc or "").splitlines()[0] if revision.doc else "",
        )
    console.print(table)


# --------------------------------------------------------------------------- smoke


@dataclass
class SmokeResult:
    """One check of the smoke suite."""

    name: str
    ok: bool
    detail: str
    millis: float


@dataclass
class SmokeRun:
    """The smoke suite against one deployment."""

    client: httpx.Client
    origin: str | None
    results: list[SmokeResult] = field(default_factory=list)

    def check(self, name: str, probe: Callable[[], str]) -> bool:
        """Run one check; any exception or assertion is a failure with its reason."""
        start = time.perf_counter()
        try:
            detail = probe()
            ok = True
        except AssertionError as exc:
            detail, ok = str(exc) or "assertion failed", False
        except httpx.HTTPError as exc:
            detail, ok = f"{type(exc).__name__}: {exc}", False
        self.results.append(SmokeResult(name, ok, detail, (time.perf_counter() - start) * 1000))
        return ok

    def skip(self, name: str, reason: str) -> None:
        """A check that could not run because an earlier one failed (counts as failed)."""
        self.results.append(SmokeResult(name, False, f"not run: {reason}", 0.0))


def _expect(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url.path}: expected {status}, "
        f"got {response.status_code} {response.text[:200]}"
    )
    if response.status_code == 204 or not response.content:
        return {}
    body = response.json()
    return body if isinstance(body, dict) else {"items": body}


def run_smoke(
    base_url: str,
    api_key: str,
    *,
    timeout: float = 10.0,
    verify: ssl.SSLContext | bool = True,
    origin: str | None = None,
) -> list[SmokeResult]:
    """Health, readiness, auth, (CORS), and a packet's whole life against a deployment."""
    base = base_url.rstrip("/")
    api = f"{base}/api/v1"
    token = f"smoke{uuid.uuid4().hex[:12]}"
    admin_headers = {"X-API-Key": api_key}
    headers = dict(admin_headers)  # replaced by the throwaway key once it exists
    throwaway: dict[str, str] = {}
    with httpx.Client(timeout=httpx.Timeout(timeout), verify=verify) as client:
        run = SmokeRun(client, origin)

        def health() -> str:
            body = _expect(client.get(f"{base}/health"), 200)
            assert body.get("status") == "ok", f"/health said {body}"
            return "ok"

        def ready() -> str:
            body = _expect(client.get(f"{base}/ready"), 200)
            assert body.get("status") == "ready", f"/ready said {body}"
            return f"database {body.get('database')}, redis {body.get('redis')}"

        def auth_required() -> str:
            response = client.get(f"{api}/packets")
            # 429 when this client already spent its failed-key budget (e.g. a previous smoke).
            assert response.status_code in {401, 429}, f"expected 401, got {response.status_code}"
            return f"{response.status_code} without a key"

        def rate_limited() -> str:
            # Failed keys are throttled per client address; a well-formed unknown key is one.
            bogus = {"X-API-Key": "hr_" + "0" * 43}
            for attempt in range(1, 201):
                response = client.get(f"{api}/packets", headers=bogus)
                if response.status_code == 429:
                    assert response.headers.get("retry-after"), "429 without Retry-After"
                    return f"429 after {attempt} failed keys"
            raise AssertionError("no 429 after 200 failed keys")

        def make_throwaway_key() -> None:
            body = {"name": f"smoke {token}", "role": "writer"}
            try:
                response = client.post(f"{api}/keys", json=body, headers=admin_headers)
            except httpx.HTTPError as exc:
                run.skip("throwaway key", f"not created ({type(exc).__name__})")
                return
            if response.status_code != 201:
                # e.g. the tier's key quota is used up: the round trip uses the given key.
                note = f"none ({response.status_code}, e.g. key quota); using the given key"
                run.check("throwaway key", lambda: note)
                return
            created = response.json()
            throwaway.update(id=str(created["id"]), key=str(created["key"]))
            headers["X-API-Key"] = throwaway["key"]
            run.check("throwaway key", lambda: f"writer key {created.get('key_prefix')}")

        run.check("health", health)
        run.check("ready", ready)
        run.check("auth required", auth_required)
        make_throwaway_key()
        if origin:

            def cors() -> str:
                response = client.options(
                    f"{api}/packets",
                    headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
                )
                allowed = response.headers.get("access-control-allow-origin")
                assert response.status_code in {200, 204}, f"preflight {response.status_code}"
                assert allowed in {origin, "*"}, f"allow-origin {allowed!r}"
                return f"allow-origin {allowed}"

            run.check("CORS preflight", cors)

        packet: dict[str, Any] = {}

        def create() -> str:
            body = {
                "metadata": {
                    "source_agent": {"id": "smoke-source", "name": "Smoke Source"},
                    "target_agent": {"id": "smoke-target", "name": "Smoke Target"},
                    "priority": "low",
                    "tags": ["smoke"],
                },
                "context": {"summary": f"Post-deploy smoke test {token}"},
            }
            packet.update(_expect(client.post(f"{api}/packets", json=body, headers=headers), 201))
            assert packet.get("id"), "no id in the created packet"
            return str(packet["id"])

        def step(name: str, probe: Callable[[str], str]) -> None:
            if not packet.get("id"):
                run.skip(name, "no packet")
                return
            run.check(name, lambda: probe(str(packet["id"])))

        def claim(packet_id: str) -> str:
            body = {"agent_id": "smoke-target", "agent_name": "Smoke Target"}
            url = f"{api}/packets/{packet_id}/claim"
            result = _expect(client.post(url, json=body, headers=headers), 200)
            assert result.get("status") == "claimed", f"status {result.get('status')}"
            return "claimed"

        def move(status: str) -> Callable[[str], str]:
            def probe(packet_id: str) -> str:
                url = f"{api}/packets/{packet_id}"
                result = _expect(client.patch(url, json={"status": status}, headers=headers), 200)
                assert result.get("status") == status, f"status {result.get('status')}"
                return status

            return probe

        def listed(packet_id: str) -> str:
            params = {"source_agent": "smoke-source", "limit": "50"}
            page = _expect(client.get(f"{api}/packets", params=params, headers=headers), 200)
            ids = [item.get("id") for item in page.get("packets", [])]
            assert packet_id in ids, "the packet is not in the list"
            return f"{len(ids)} listed"

        def searched(packet_id: str) -> str:
            params = {"q": token}
            page = _expect(client.get(f"{api}/packets/search", params=params, headers=headers), 200)
            ids = [item.get("id") for item in page.get("packets", [])]
            assert packet_id in ids, f"search for {token} did not find the packet"
            return "found"

        def delete(packet_id: str) -> str:
            _expect(client.delete(f"{api}/packets/{packet_id}", headers=headers), 204)
            return "deleted (soft)"

        run.check("create packet", create)
        step("claim", claim)
        step("in_progress", move("in_progress"))
        step("complete", move("completed"))
        step("list", listed)
        step("search", searched)
        step("delete", delete)

        def revoke() -> str:
            url = f"{api}/keys/{throwaway['id']}"
            _expect(client.delete(url, headers=admin_headers), 204)
            return "revoked"

        if throwaway:
            run.check("revoke throwaway key", revoke)
        # Last: it throttles this client's failed-key budget for a minute.
        run.check("rate limit (429)", rate_limited)
        return run.results


def smoke(
    url: Annotated[str, typer.Argument(help="Base URL, e.g. https://api.example.com")],
    api_key: Annotated[
        str, typer.Option(envvar="HR_SMOKE_API_KEY", help="An admin key (makes a throwaway key).")
    ],
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 10.0,
    ca_cert: Annotated[
        Path | None, typer.Option(help="CA bundle to verify TLS with (default: system).")
    ] = None,
    origin: Annotated[
        str | None, typer.Option(help="Also check a CORS preflight from this origin.")
    ] = None,
) -> None:
    """Post-deploy smoke test: health, ready, auth, a packet's life; exit 1 on any failure."""
    verify: ssl.SSLContext | bool = True
    if ca_cert is not None:
        verify = ssl.create_default_context(cafile=str(ca_cert))
    results = run_smoke(url, api_key, timeout=timeout, verify=verify, origin=origin)
    table = Table("check", "result", "detail", "ms", title=f"smoke {url}")
    for result in results:
        mark = "[green]pass[/green]" if result.ok else "[red]FAIL[/red]"
        table.add_row(result.name, mark, result.detail, f"{result.millis:.0f}")
    console.print(table)
    passed = sum(result.ok for result in results)
    failed = len(results) - passed
    console.print(f"{passed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer, migrate_app: typer.Typer) -> None:
    """Add the operator commands to the `handoffrail` app."""
    app.command()(backup)
    app.command()(restore)
    app.command()(smoke)
    migrate_app.command("history")(migrate_history)
