"""`bench --set HR_NAME=VALUE`: server settings for an A/B run of the harness."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import processes


def test_settings_are_parsed_and_reach_every_server(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = processes.parse_settings(["HR_FAST_LANES=false", "HR_LOG_LEVEL=warning=x"])
    assert parsed == {"HR_FAST_LANES": "false", "HR_LOG_LEVEL": "warning=x"}
    monkeypatch.setattr(processes, "SERVER_OVERRIDES", parsed)
    env = processes.server_env("sqlite+aiosqlite:///x.db", "hr_key", 8000, Path("."))
    assert env["HR_FAST_LANES"] == "false"
    assert env["HR_LOG_LEVEL"] == "warning=x"  # a setting given wins over the harness default
    assert env["HR_ENVIRONMENT"] == "staging"


@pytest.mark.parametrize("item", ["FAST_LANES=false", "HR_FAST_LANES", "HR_=1", "=x", "PATH=/"])
def test_anything_but_hr_name_value_is_refused(item: str) -> None:
    with pytest.raises(ValueError, match="HR_NAME=VALUE"):
        processes.parse_settings([item])


def test_the_sqlite_server_runs_as_the_embedded_default_without_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import sqlite_phase

    monkeypatch.setenv("REDIS_URL", "redis://platform:6379/0")  # a platform's would be read
    monkeypatch.setattr(processes, "SERVER_OVERRIDES", {})
    env = sqlite_phase.embedded_env("sqlite+aiosqlite:///x.db", "hr_key", 8000, Path("."))
    assert env["HR_ENVIRONMENT"] == "development"
    assert not {"HR_REDIS_URL", "HR_REDIS_PREFIX", "REDIS_URL"} & set(env)
    assert processes.server_env("sqlite+aiosqlite:///x.db", "k", 1, Path("."))["HR_REDIS_URL"]

    monkeypatch.setattr(processes, "SERVER_OVERRIDES", {"HR_REDIS_URL": "redis://h:6379/1"})
    env = sqlite_phase.embedded_env("sqlite+aiosqlite:///x.db", "hr_key", 8000, Path("."))
    assert env["HR_REDIS_URL"] == "redis://h:6379/1"  # an A/B asking for Redis gets it
