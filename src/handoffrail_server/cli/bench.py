"""`handoffrail bench`: run the benchmark harness (`bench/` in a source checkout, issue 10).

The harness starts its own servers on a throw-away PostgreSQL database, drives load from a separate
process and prints one table with every figure as a ratio to a ceiling measured in the same run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

HARNESS = Path("bench") / "harness.py"


def find_checkout(start: Path | None = None) -> Path | None:
    """The source checkout holding `bench/harness.py`: the working directory or this package's."""
    here = Path(__file__).resolve()
    candidates = [start or Path.cwd(), here.parents[3]]
    for candidate in candidates:
        for directory in (candidate, *candidate.parents):
            if (directory / HARNESS).is_file():
                return directory
    return None


def bench(
    smoke: Annotated[
        bool, typer.Option(help="Tiny counts, a few seconds, no timing meaning (CI).")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON here.")
    ] = None,
    profile: Annotated[
        Path | None, typer.Option(help="py-spy the one-process server into this directory.")
    ] = None,
    only: Annotated[
        str, typer.Option(help="Phases to run: serve, gunicorn, sqlite (comma-separated).")
    ] = "serve,gunicorn,sqlite",
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="A server setting for this run, HR_NAME=VALUE (repeatable), e.g. for an A/B.",
        ),
    ] = None,
) -> None:
    """Benchmark the server against ceilings measured in the same run (PostgreSQL + Redis)."""
    root = find_checkout()
    if root is None:
        typer.echo("bench/ not found: run from a source checkout of handoffrail-server", err=True)
        raise typer.Exit(2)
    argv = [sys.executable, "-m", "bench", "--only", only]
    if smoke:
        argv.append("--smoke")
    if json_path is not None:
        argv += ["--json", str(json_path.resolve())]
    if profile is not None:
        argv += ["--profile", str(profile.resolve())]
    for setting in settings or []:
        argv += ["--set", setting]
    code = subprocess.call(argv, cwd=root)  # noqa: S603 - our own interpreter and module
    if code:
        raise typer.Exit(code)
