"""Shared helpers for the deployment proofs: repository paths, pinned tools, bounded runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
IN_CI = bool(os.environ.get("CI"))
TOOL_TIMEOUT = 120


def tool(name: str) -> str:
    """A pinned tool from the venv (a dev dependency) or PATH; missing: skip, but fail in CI."""
    candidate = BIN / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (a dev dependency: run `make install`)"
    if IN_CI:
        pytest.fail(message + "; CI must run every deployment check")
    pytest.skip(message)


def run(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = TOOL_TIMEOUT,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (bounded), capturing text output."""
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without HR_*, compose and Caddy variables, plus `extra`."""
    dropped = ("HR_", "POSTGRES_", "REDIS_PASSWORD", "CADDY_", "COMPOSE_", "WEB_CONCURRENCY")
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith(dropped)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def write_broken(tmp_path: Path, name: str, old: str, new: str, source: str | None = None) -> Path:
    """A copy of an artifact with one change (the change must apply)."""
    text = (ROOT / (source or name)).read_text()
    assert old in text, f"{old!r} not in {source or name}"
    target = tmp_path / Path(name).name
    target.write_text(text.replace(old, new, 1))
    return target


PROD_SECRETS = {
    "POSTGRES_PASSWORD": "pg-pass-123",
    "REDIS_PASSWORD": "redis-pass-123",
    "HR_SECRET_KEY": "s" * 48,
    "HR_CORS_ORIGINS": '["https://app.example.com"]',
    "HR_SITE_ADDRESS": "api.example.com",
}


def compose(tmp_path: Path, *args: str, files: tuple[str, ...], **env: str) -> tuple[int, str, str]:
    empty = tmp_path / "empty.env"
    empty.touch()
    command = [tool("docker-compose"), "--env-file", str(empty)]
    for name in files:
        command += ["-f", name]
    result = run(*command, *args, env=clean_env(**env))
    return result.returncode, result.stdout, result.stderr


def prod_config(tmp_path: Path) -> dict[str, Any]:
    code, out, err = compose(
        tmp_path, "config", "--format", "json", files=("compose.prod.yaml",), **PROD_SECRETS
    )
    assert code == 0, err
    return dict(json.loads(out))
