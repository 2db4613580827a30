"""Configuration safety (issue 6, seed 001): production refusals and `handoffrail doctor`.

Refusals are checked through `load_settings` (each names its variable) and through real processes
(the server refuses to start). The doctor runs as a subprocess with only the variables it is given.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from handoffrail_server.db import migrations
from handoffrail_server.settings import Environment, SettingsError, load_settings
from tests.conftest import free_port

PG_URL = "postgresql+asyncpg://app:pw@db.example:5432/handoffrail"
STRONG_SECRET = "Vq3-Jp9_wL2xTz7Rk5mNb8Hc4Yd6Gf1Sa0Ue"
HANDOFFRAIL = str(Path(sys.executable).with_name("handoffrail"))
TIMEOUT = 60


@pytest.fixture(autouse=True)
def no_hr_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from no HR_ variable at all, whatever the shell exported."""
    for name in list(os.environ):
        if name.upper().startswith("HR_"):
            monkeypatch.delenv(name)


def production(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    """A valid production environment, then `variables` on top."""
    values = {
        "HR_ENVIRONMENT": "production",
        "HR_DATABASE_URL": PG_URL,
        "HR_SECRET_KEY": STRONG_SECRET,
        "HR_CORS_ORIGINS": '["https://app.example"]',
        **variables,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_valid_production_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch)
    settings = load_settings()
    assert settings.environment is Environment.PRODUCTION
    assert settings.debug is False


REFUSALS = [
    pytest.param("HR_DATABASE_URL", "sqlite:///./handoffrail.db", "PostgreSQL", id="sqlite"),
    pytest.param(
        "HR_DATABASE_URL", "sqlite+aiosqlite:////var/lib/hr.db", "PostgreSQL", id="aiosqlite"
    ),
    pytest.param("HR_SECRET_KEY", "short-secret", "32 characters", id="short-secret"),
    pytest.param("HR_SECRET_KEY", "x" * 31, "32 characters", id="31-characters"),
    pytest.param(
        "HR_SECRET_KEY", "dev-insecure-secret-key-change-me", "random", id="default-placeholder"
    ),
    pytest.param("HR_SECRET_KEY", "please-changeme-before-going-live-ok", "random", id="changeme"),
    pytest.param("HR_CORS_ORIGINS", '["*"]', "list the allowed origins", id="cors-json"),
    pytest.param("HR_CORS_ORIGINS", "https://app.example,*", "list the allowed", id="cors-csv"),
    pytest.param("HR_DEBUG", "true", "unset HR_DEBUG", id="debug"),
    pytest.param("HR_DEBUG", "1", "unset HR_DEBUG", id="debug-1"),
]


@pytest.mark.parametrize(("variable", "value", "fix"), REFUSALS)
def test_production_refuses_unsafe_setting_naming_variable_and_fix(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fix: str
) -> None:
    production(monkeypatch, **{variable: value})
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{variable}: "), message
    assert fix in message
    if variable == "HR_SECRET_KEY":
        assert value not in message  # a refused secret is never echoed


def test_production_refuses_the_default_secret_when_none_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    production(monkeypatch)
    monkeypatch.delenv("HR_SECRET_KEY")
    with pytest.raises(SettingsError, match=r"^HR_SECRET_KEY: "):
        load_settings()


def test_staging_refuses_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_ENVIRONMENT", "staging")
    monkeypatch.setenv("HR_DATABASE_URL", "sqlite:///./staging.db")
    with pytest.raises(SettingsError, match=r"^HR_DATABASE_URL: .*staging"):
        load_settings()


def test_staging_refuses_wildcard_cors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_ENVIRONMENT", "staging")
    monkeypatch.setenv("HR_DATABASE_URL", PG_URL)
    monkeypatch.setenv("HR_SECRET_KEY", STRONG_SECRET)
    monkeypatch.setenv("HR_CORS_ORIGINS", '["*"]')
    with pytest.raises(SettingsError, match=r"^HR_CORS_ORIGINS: '\*' is refused in staging"):
        load_settings()


def test_development_allows_everything_production_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HR_DATABASE_URL", "sqlite:///./dev.db")
    monkeypatch.setenv("HR_SECRET_KEY", "short")
    monkeypatch.setenv("HR_CORS_ORIGINS", '["*"]')
    monkeypatch.setenv("HR_DEBUG", "true")
    settings = load_settings()
    assert settings.is_development
    assert settings.debug is True


# -- real processes ---------------------------------------------------------------------------


def clean_env(**variables: str) -> dict[str, str]:
    """A minimal environment: no inherited HR_ variable, a wide terminal for rich tables."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT"}
    }
    env.update({"COLUMNS": "240", "NO_COLOR": "1", "TERM": "dumb"}, **variables)
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HR_DATABASE_URL", "sqlite:///./never-created.db"),
        ("HR_SECRET_KEY", "short"),
        ("HR_CORS_ORIGINS", '["*"]'),
        ("HR_DEBUG", "true"),
    ],
)
def test_server_process_refuses_to_start_in_unsafe_production(
    tmp_path: Path, variable: str, value: str
) -> None:
    variables = {
        "HR_ENVIRONMENT": "production",
        "HR_DATABASE_URL": PG_URL,
        "HR_SECRET_KEY": STRONG_SECRET,
        variable: value,
    }
    env = clean_env(**variables)
    # the ASGI module Gunicorn imports builds the app from the environment at import time
    imported = subprocess.run(
        [sys.executable, "-c", "import handoffrail_server.asgi"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert imported.returncode != 0
    assert "SettingsError" in imported.stderr
    assert f"{variable}: " in imported.stderr
    # and the CLI says so in one line, exit code 2, without a traceback
    served = subprocess.run(
        [HANDOFFRAIL, "serve", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert served.returncode == 2, served.stdout + served.stderr
    assert variable in served.stderr
    assert "Traceback" not in served.stderr
    assert not (tmp_path / "never-created.db").exists()


# -- handoffrail doctor -------------------------------------------------------------------------


def doctor(**variables: str) -> subprocess.CompletedProcess[str]:
    return run([HANDOFFRAIL, "doctor"], clean_env(**variables))


def row(output: str, check: str) -> str:
    """The doctor table's row for `check` (raises when absent)."""
    for line in output.splitlines():
        if re.search(rf"\b{re.escape(check)}\b", line):
            return line
    raise AssertionError(f"no {check!r} row in:\n{output}")


@pytest.mark.postgres
def test_doctor_passes_on_a_migrated_database(postgres_url: str) -> None:
    migrations.upgrade(postgres_url)
    planted = "doctor-planted-pw"
    url = postgres_url.replace("postgres@", f"postgres:{planted}@", 1)  # trust auth ignores it
    result = doctor(HR_DATABASE_URL=url, HR_REDIS_URL="redis://127.0.0.1:6379/0")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for check in ("configuration", "database reachable", "migrations at head", "redis"):
        assert "PASS" in row(output, check) or "WARN" in row(output, check), check
    assert "FAIL" not in output
    assert planted not in output
    assert "***" in row(output, "database url")


@pytest.mark.postgres
def test_doctor_fails_on_an_unmigrated_database(postgres_url: str) -> None:
    result = doctor(HR_DATABASE_URL=postgres_url)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "PASS" in row(output, "database reachable")
    line = row(output, "migrations at head")
    assert "FAIL" in line
    assert "migrate up" in output


def test_doctor_fails_when_the_database_is_unreachable() -> None:
    closed = free_port()
    result = doctor(
        HR_ENVIRONMENT="staging",
        HR_SECRET_KEY=STRONG_SECRET,
        HR_DATABASE_URL=f"postgresql://postgres:unreachable-pw@127.0.0.1:{closed}/none",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "FAIL" in row(output, "database reachable")
    assert "unreachable-pw" not in output


def test_doctor_fails_on_refused_configuration_naming_the_variable() -> None:
    result = doctor(HR_ENVIRONMENT="production", HR_DATABASE_URL="sqlite:///./x.db")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "FAIL" in row(output, "configuration")
    assert "HR_DATABASE_URL" in output


def test_doctor_fails_when_configured_redis_is_unreachable(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'doctor.db'}"
    migrations.upgrade(url)
    result = doctor(HR_DATABASE_URL=url, HR_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "PASS" in row(output, "migrations at head")
    assert "FAIL" in row(output, "redis")


@pytest.mark.postgres
def test_doctor_fails_on_wildcard_cors_in_staging(postgres_url: str) -> None:
    migrations.upgrade(postgres_url)
    result = doctor(
        HR_ENVIRONMENT="staging",
        HR_SECRET_KEY=STRONG_SECRET,
        HR_DATABASE_URL=postgres_url,
        HR_CORS_ORIGINS='["*"]',
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "FAIL" in row(output, "configuration")
    assert "HR_CORS_ORIGINS" in output
