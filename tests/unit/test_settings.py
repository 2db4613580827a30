"""Settings from `HR_*` variables: URL normalising, environment aliases, production refusals."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoffrail_server.settings import (
    Environment,
    Settings,
    SettingsError,
    load_settings,
    normalize_database_url,
    redact_url,
)

PG_URL = "postgresql+asyncpg://app:pw@db.example:5432/handoffrail"
STRONG_SECRET = "k" * 24 + "Zq8-Xr_2mW9pLs3vTn6yBc"
VALID_KEY = "hr_" + "A" * 20 + "b" * 20 + "-_9"


def _hr_variables() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.upper().startswith("HR_")}


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Torn down after monkeypatch: the HR_ variables must be exactly as the test found them."""
    before = _hr_variables()
    yield
    assert _hr_variables() == before, "a test changed HR_ variables outside monkeypatch"


@pytest.fixture(autouse=True)
def clean_environment(no_leaks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test with no HR_ variable set (whatever the shell exported)."""
    for name in _hr_variables():
        monkeypatch.delenv(name)
    for name in ("DATABASE_URL", "REDIS_URL", "SENTRY_DSN"):
        monkeypatch.delenv(name, raising=False)


def _production(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    monkeypatch.setenv("HR_ENVIRONMENT", "production")
    monkeypatch.setenv("HR_DATABASE_URL", PG_URL)
    monkeypatch.setenv("HR_SECRET_KEY", STRONG_SECRET)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


# -- normalize_database_url ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgresql+asyncpg://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgresql+psycopg2://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgres://u:p@h/db?sslmode=require", "postgresql+asyncpg://u:p@h/db?ssl=require"),
        ("postgresql://u:p@h/db?sslmode=require", "postgresql+asyncpg://u:p@h/db?ssl=require"),
        (
            "postgresql+asyncpg://u:p@h/db?sslmode=require",
            "postgresql+asyncpg://u:p@h/db?ssl=require",
        ),
        (
            "postgres://u:p@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            "postgresql+asyncpg://u:p@h/db?ssl=verify-full",
        ),
        (
            "postgres://u:p@h/db?sslcert=a&sslkey=b&sslcrl=c&sslrootcert=d",
            "postgresql+asyncpg://u:p@h/db",
        ),
        (
            "postgres://u:p@h/db?application_name=hr&sslmode=require",
            "postgresql+asyncpg://u:p@h/db?application_name=hr&ssl=require",
        ),
        ("postgres://u:p@h/db?ssl=true&sslmode=require", "postgresql+asyncpg://u:p@h/db?ssl=true"),
        ("  postgres://u:p@h/db  ", "postgresql+asyncpg://u:p@h/db"),
        ("sqlite:///./handoffrail.db", "sqlite+aiosqlite:///./handoffrail.db"),
        ("sqlite:////var/lib/hr.db", "sqlite+aiosqlite:////var/lib/hr.db"),
        ("sqlite+aiosqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
        ("mysql://u:p@h/db", "mysql://u:p@h/db"),
    ],
)
def test_normalize_database_url(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


def test_normalize_database_url_keeps_password_with_special_characters() -> None:
    url = "postgres://app:p%40ss%3Aword@db.example:6543/hr?sslmode=require"

    assert normalize_database_url(url) == (
        "postgresql+asyncpg://app:p%40ss%3Aword@db.example:6543/hr?ssl=require"
    )


def test_normalize_database_url_is_idempotent() -> None:
    once = normalize_database_url("postgres://u:p@h/db?sslmode=require&sslrootcert=x")

    assert normalize_database_url(once) == once


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("postgresql+asyncpg://app:hunter2@db/hr") == (
        "postgresql+asyncpg://app:***@db/hr"
    )
    assert redact_url("sqlite+aiosqlite:///./x.db") == "sqlite+aiosqlite:///./x.db"


# -- reading the environment --------------------------------------------------------------------


def test_defaults_are_development_on_sqlite() -> None:
    settings = load_settings()

    assert settings.environment is Environment.DEVELOPMENT
    assert settings.is_development
    assert settings.is_sqlite
    assert settings.database_url.startswith("sqlite+aiosqlite://")
    assert settings.cors_origins == []
    assert settings.bootstrap_api_key is None


def test_database_url_from_environment_is_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_DATABASE_URL", "postgres://u:p@h/db?sslmode=require&sslrootcert=ca")

    assert load_settings().database_url == "postgresql+asyncpg://u:p@h/db?ssl=require"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("dev", Environment.DEVELOPMENT),
        ("development", Environment.DEVELOPMENT),
        ("DEV", Environment.DEVELOPMENT),
        ("stage", Environment.STAGING),
        ("staging", Environment.STAGING),
        ("prod", Environment.PRODUCTION),
        (" Production ", Environment.PRODUCTION),
    ],
)
def test_environment_aliases(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: Environment
) -> None:
    monkeypatch.setenv("HR_ENVIRONMENT", value)
    monkeypatch.setenv("HR_DATABASE_URL", PG_URL)
    monkeypatch.setenv("HR_SECRET_KEY", STRONG_SECRET)

    assert load_settings().environment is expected


def test_unknown_environment_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HR_ENVIRONMENT", "qa")

    with pytest.raises(SettingsError, match="HR_ENVIRONMENT"):
        load_settings()


def test_cors_origins_parsed_from_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_CORS_ORIGINS", '["https://app.example", "https://admin.example"]')

    assert load_settings().cors_origins == ["https://app.example", "https://admin.example"]


def test_cors_origins_parsed_from_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_CORS_ORIGINS", "https://a.example, https://b.example,")

    assert load_settings().cors_origins == ["https://a.example", "https://b.example"]


def test_empty_cors_origins_is_no_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_CORS_ORIGINS", "  ")

    assert load_settings().cors_origins == []


def test_malformed_cors_json_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HR_CORS_ORIGINS", '["https://app.example"')

    with pytest.raises(SettingsError, match="HR_CORS_ORIGINS"):
        load_settings()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (" 127.0.0.1 , 10.0.0.0/8 ,, ::1", "127.0.0.1,10.0.0.0/8,::1"),
        ("*", "*"),
        ("", ""),
    ],
)
def test_forwarded_allow_ips_are_addresses_or_networks(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    monkeypatch.setenv("HR_FORWARDED_ALLOW_IPS", given)

    assert load_settings().forwarded_allow_ips == expected


def test_bootstrap_key_of_generated_shape_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_BOOTSTRAP_API_KEY", f"  {VALID_KEY}\n")

    key = load_settings().bootstrap_api_key

    assert key is not None
    assert key.get_secret_value() == VALID_KEY


def test_blank_bootstrap_key_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_BOOTSTRAP_API_KEY", "")

    assert load_settings().bootstrap_api_key is None


@pytest.mark.parametrize(
    "key",
    [
        "hr_short",
        "hr_" + "a" * 42,
        "hr_" + "a" * 44,
        "xx_" + "a" * 43,
        "HR_" + "a" * 43,
        "hr_" + "a" * 42 + "=",
        "hr_" + "a" * 42 + "+",
        "hr_" + "a" * 21 + " " + "a" * 21,
        "a" * 46,
    ],
)
def test_bootstrap_key_of_wrong_shape_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv("HR_BOOTSTRAP_API_KEY", key)

    with pytest.raises(SettingsError, match=r"^HR_BOOTSTRAP_API_KEY: ") as caught:
        load_settings()
    assert key not in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HR_DATABASE_URL", "mysql://u:p@h/db"),
        ("HR_DATABASE_URL", "   "),
        ("HR_REDIS_URL", "http://cache:6379"),
        ("HR_PORT", "0"),
        ("HR_PORT", "not-a-number"),
        ("HR_LOG_LEVEL", "verbose"),
        ("HR_TIER_DEFAULT", "platinum"),
        ("HR_PACKET_TTL_SECONDS", "5"),
        ("HR_GC_THRESHOLD", "-1"),
        ("HR_GC_THRESHOLD", "1000001"),
        ("HR_FORWARDED_ALLOW_IPS", "10.0.0.1/8"),
        ("HR_FORWARDED_ALLOW_IPS", "proxy.internal"),
        ("HR_FORWARDED_ALLOW_IPS", "127.0.0.1,*x"),
    ],
)
def test_invalid_value_raises_settings_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError, match=f"^{variable}: "):
        load_settings()


def test_several_invalid_values_are_all_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_PORT", "70000")
    monkeypatch.setenv("HR_LOG_LEVEL", "loud")

    with pytest.raises(SettingsError) as caught:
        load_settings()

    assert "HR_PORT" in str(caught.value)
    assert "HR_LOG_LEVEL" in str(caught.value)


def test_blank_redis_url_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_REDIS_URL", "")

    assert load_settings().redis_url is None


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_overrides_take_precedence_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_PORT", "9000")

    assert load_settings(port=9100).port == 9100


# -- production and staging refusals ------------------------------------------------------------


def test_strong_production_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    _production(monkeypatch, HR_CORS_ORIGINS='["https://app.example"]')

    settings = load_settings()

    assert settings.environment is Environment.PRODUCTION
    assert not settings.is_sqlite
    assert settings.cors_origins == ["https://app.example"]


@pytest.mark.parametrize("environment", ["production", "staging"])
def test_sqlite_is_refused_outside_development(
    monkeypatch: pytest.MonkeyPatch, environment: str
) -> None:
    _production(monkeypatch, HR_ENVIRONMENT=environment, HR_DATABASE_URL="sqlite:///./hr.db")

    with pytest.raises(SettingsError, match=r"^HR_DATABASE_URL: SQLite is for development only"):
        load_settings()


@pytest.mark.parametrize(
    "secret",
    [
        "too-short",
        "x" * 31,
        "dev-insecure-secret-key-change-me",
        "a-long-enough-secret-but-change-me-please",
        "a-long-enough-secret-but-CHANGEME-please-ok",
    ],
)
def test_weak_or_placeholder_secret_is_refused_in_production(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    _production(monkeypatch, HR_SECRET_KEY=secret)

    with pytest.raises(SettingsError, match=r"^HR_SECRET_KEY: ") as caught:
        load_settings()
    assert secret not in str(caught.value)


def test_default_secret_is_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    _production(monkeypatch)
    monkeypatch.delenv("HR_SECRET_KEY")

    with pytest.raises(SettingsError, match=r"^HR_SECRET_KEY: "):
        load_settings()


def test_secret_of_exactly_32_random_characters_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _production(monkeypatch, HR_SECRET_KEY="Q" * 16 + "z" * 16)

    assert load_settings().secret_key.get_secret_value() == "Q" * 16 + "z" * 16


@pytest.mark.parametrize("origins", ['["*"]', "*", '["https://app.example", "*"]'])
def test_wildcard_cors_is_refused_in_production(
    monkeypatch: pytest.MonkeyPatch, origins: str
) -> None:
    _production(monkeypatch, HR_CORS_ORIGINS=origins)

    with pytest.raises(SettingsError, match=r"^HR_CORS_ORIGINS: '\*' is refused in production"):
        load_settings()


def test_wildcard_cors_and_default_secret_are_allowed_in_development(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HR_CORS_ORIGINS", '["*"]')

    assert load_settings().cors_origins == ["*"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HR_SECRET_KEY", ""),  # the default development secret
        ("HR_SECRET_KEY", "short"),
        ("HR_CORS_ORIGINS", '["*"]'),
        ("HR_DEBUG", "true"),
    ],
)
def test_staging_refuses_what_production_refuses(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """DEPLOY.md: staging and production need a secret of 32+ characters, an explicit CORS
    list and no debug mode (the secret signs dashboard sessions and seals webhook secrets)."""
    monkeypatch.setenv("HR_ENVIRONMENT", "staging")
    monkeypatch.setenv("HR_DATABASE_URL", PG_URL)
    monkeypatch.setenv("HR_SECRET_KEY", STRONG_SECRET)
    if value:
        monkeypatch.setenv(variable, value)
    else:
        monkeypatch.delenv(variable)
    with pytest.raises(SettingsError, match=f"^{variable}: .*staging"):
        load_settings()


def test_staging_may_send_webhooks_to_private_receivers(monkeypatch: pytest.MonkeyPatch) -> None:
    _production(monkeypatch, HR_ENVIRONMENT="staging", HR_WEBHOOK_ALLOW_PRIVATE="true")
    assert load_settings().webhook_allow_private


def test_secret_key_is_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    _production(monkeypatch)

    settings = load_settings()

    assert STRONG_SECRET not in repr(settings)
    assert STRONG_SECRET not in str(settings.model_dump())


def test_settings_built_directly_skip_the_environment_but_keep_rules() -> None:
    with pytest.raises(ValueError, match="HR_SECRET_KEY"):
        Settings(environment="prod", database_url=PG_URL)


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    undocumented = [
        f"HR_{name.upper()}"
        for name in Settings.model_fields
        if f"`HR_{name.upper()}" not in readme
    ]
    assert undocumented == []


# -- platform variables without the prefix ------------------------------------------------------


def test_platform_database_and_redis_urls_are_read_without_the_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://app:pw@db.internal:5432/hr")
    monkeypatch.setenv("REDIS_URL", "redis://cache.internal:6379/0")
    monkeypatch.setenv("SENTRY_DSN", "https://abc@sentry.example/1")
    settings = load_settings()
    assert settings.database_url == "postgresql+asyncpg://app:pw@db.internal:5432/hr"
    assert settings.redis_url == "redis://cache.internal:6379/0"
    assert settings.sentry_dsn is not None
    assert settings.sentry_dsn.get_secret_value() == "https://abc@sentry.example/1"


def test_the_prefixed_variable_wins_over_the_platform_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://platform@db/one")
    monkeypatch.setenv("HR_DATABASE_URL", "postgres://ours@db/two")
    assert load_settings().database_url == "postgresql+asyncpg://ours@db/two"
    assert load_settings(database_url=PG_URL).database_url == PG_URL


def test_a_bad_platform_variable_is_named_as_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://nope@db/x")
    with pytest.raises(SettingsError, match=r"^DATABASE_URL: "):
        load_settings()


@pytest.mark.parametrize(("given", "level"), [("warn", "warning"), ("WARN", "warning")])
def test_common_log_level_spellings_are_accepted(
    monkeypatch: pytest.MonkeyPatch, given: str, level: str
) -> None:
    monkeypatch.setenv("HR_LOG_LEVEL", given)
    assert load_settings().log_level == level


@pytest.mark.parametrize("variable", ["HR_METRICS_TOKEN", "HR_SENTRY_DSN"])
def test_blank_secrets_mean_unset(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """`${HR_METRICS_TOKEN:-}` in a compose file must not demand an empty bearer token."""
    monkeypatch.setenv(variable, "  ")
    settings = load_settings()
    assert settings.metrics_token is None
    assert settings.sentry_dsn is None
