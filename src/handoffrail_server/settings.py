"""Process settings read from `HR_*` environment variables; validated once at start-up.

Nothing here opens connections: it only parses, normalises and refuses bad values with a message
that names the variable.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from enum import StrEnum
from functools import cached_property, lru_cache
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from handoffrail_server.limits.tiers import Quotas, parse_overrides

KEY_PATTERN = re.compile(r"^hr_[A-Za-z0-9_-]{43}$")

# libpq's SSL query parameters, which asyncpg does not accept as keywords (DEPLOY.md gotcha).
_SSL_PARAMS = {"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl"}


class Environment(StrEnum):
    """Where the process runs; decides safety checks and defaults."""

    DEVELOPMENT = "development"  #: laptop: SQLite, console logs, migrations applied by `serve`
    STAGING = "staging"  #: production-like, warns instead of refusing where safe
    PRODUCTION = "production"  #: refuses unsafe settings at start


#: `HR_FORWARDED_ALLOW_IPS` for a platform whose edge proxy reaches the app over a private
#: network (Fly, Render, Railway, Kubernetes, compose): the proxies are trusted, and the client
#: is the rightmost `X-Forwarded-For` entry that is not one of them (the one the edge appended);
#: with `*` it would be the leftmost, which any client can write.
PRIVATE_NETWORKS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7,127.0.0.1,::1"

_ENV_ALIASES = {"dev": "development", "prod": "production", "stage": "staging"}


def environment_name(raw: str) -> str:
    """`HR_ENVIRONMENT` as a canonical name (`dev` → `development`, ...); what the settings
    read, and what `deploy/gunicorn.conf.py` reads before any app is loaded."""
    lowered = raw.strip().lower()
    return _ENV_ALIASES.get(lowered, lowered)


class SettingsError(ValueError):
    """A setting is invalid; the message names the `HR_*` variable and the fix."""


def normalize_database_url(url: str) -> str:
    """Rewrite `postgres://`/`postgresql://` URLs to the asyncpg driver and libpq SSL params.

    `sslmode=require` (as managed PostgreSQL providers print it) becomes asyncpg's `ssl=require`.
    """
    url = url.strip()
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    for prefix in (
        "postgres://",
        "postgresql://",
        "postgresql+psycopg2://",
        "postgresql+psycopg://",
    ):
        if url.startswith(prefix):
            url = "postgresql+asyncpg://" + url[len(prefix) :]
            break
    if not url.startswith("postgresql+asyncpg://"):
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept: list[tuple[str, str]] = []
    ssl_value: str | None = None
    for name, value in query:
        if name == "sslmode":
            ssl_value = value
        elif name in _SSL_PARAMS:
            # asyncpg takes certificates through an SSLContext; these are not URL keywords.
            continue
        else:
            kept.append((name, value))
    if ssl_value is not None and not any(name == "ssl" for name, _ in kept):
        kept.append(("ssl", ssl_value))
    return urlunsplit(parts._replace(query=urlencode(kept)))


def redact_url(url: str) -> str:
    """Return the URL with any password replaced by `***` (for logs and doctor output)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Settings(BaseSettings):
    """All process settings. Built by `get_settings()` or explicitly in tests."""

    model_config = SettingsConfigDict(
        env_prefix="HR_", env_file=None, extra="ignore", case_sensitive=False
    )

    environment: Environment = Environment.DEVELOPMENT
    database_url: str = "sqlite+aiosqlite:///./handoffrail.db"
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    log_level: str = "info"
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    tier_default: str = "free"
    secret_key: SecretStr = SecretStr("dev-insecure-secret-key-change-me")
    bootstrap_api_key: SecretStr | None = None
    db_pool_size: int = Field(default=10, ge=1, le=500)
    db_max_overflow: int = Field(default=10, ge=0, le=500)
    db_pool_timeout: float = Field(default=10.0, gt=0)
    db_pool_recycle: int = Field(default=1800, ge=-1)
    db_statement_cache_size: int = Field(default=100, ge=0)
    #: test each pooled connection with a round trip before use; off by default (it costs a
    #: round trip per request): a connection found dead fails one request with 503 and
    #: SQLAlchemy then replaces every pooled connection of that outage
    db_pool_pre_ping: bool = False
    #: PostgreSQL: concurrent requests' lone writes (a create) share one transaction and
    #: round trip, each still committed before its answer (db/group_commit.py)
    db_group_commit: bool = True
    #: PostgreSQL: rows of packets this process changed moments ago; a claim or PATCH of one
    #: skips its read (its compare-and-set checks the row is unchanged; packets/recent.py)
    recent_packets: int = Field(default=256, ge=0, le=100_000)
    db_echo: bool = False
    #: seconds a process may reuse a resolved API key (PostgreSQL; cleared at once on any key
    #: or tenant change through LISTEN/NOTIFY, keys/cache.py); 0 looks every key up each time
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=3600)
    #: allocations the cyclic garbage collector lets pass before a young-generation collection
    #: in a server process (observability/runtime.py); 0 keeps Python's own (700)
    gc_threshold: int = Field(default=10_000, ge=0, le=1_000_000)
    packet_ttl_seconds: int = Field(default=86400, ge=60)
    max_batch_size: int = Field(default=50, ge=1, le=500)
    docs_enabled: bool = True
    fast_lanes: bool = True
    expiry_interval_seconds: float = Field(default=60.0, ge=0)
    debug: bool = False
    metrics_token: SecretStr | None = None
    sentry_dsn: SecretStr | None = None
    forwarded_allow_ips: str = "127.0.0.1"
    tier_quotas: str | None = None
    rate_limit_enabled: bool = True
    rate_limit_per_minute: int = Field(default=600, ge=0)
    auth_failures_per_minute: int = Field(default=30, ge=0)
    redis_prefix: str = Field(default="hr", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhook_max_attempts: int = Field(default=7, ge=1, le=50)
    webhook_retry_horizon_seconds: float = Field(default=172_800, gt=0)
    webhook_lease_seconds: float = Field(default=60.0, ge=1)
    webhook_delivery_retention_days: int = Field(default=14, ge=1)
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    worker_concurrency: int = Field(default=8, ge=1, le=256)
    #: serve the worker's own metrics (deliveries, job runs) on this port; 0: off
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    stream_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    stream_heartbeat_seconds: float = Field(default=15.0, ge=1, le=300)
    stream_retention_seconds: int = Field(default=86_400, ge=60)
    #: `handoffrail serve`: on SIGTERM, how long open requests may finish before they are
    #: cancelled (their transactions roll back) and the process shuts down cleanly
    shutdown_timeout_seconds: int = Field(default=25, ge=1, le=3600)

    @field_validator("environment", mode="before")
    @classmethod
    def _environment_alias(cls, value: Any) -> Any:
        return environment_name(value) if isinstance(value, str) else value

    @field_validator("database_url", mode="before")
    @classmethod
    def _database_url(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("must be a database URL such as sqlite+aiosqlite:///./handoffrail.db")
        normalized = normalize_database_url(value)
        if not normalized.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("only SQLite (sqlite+aiosqlite://) and PostgreSQL URLs are supported")
        return normalized

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str) and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            value = {"warn": "warning", "fatal": "critical"}.get(value, value)
            if value not in {"debug", "info", "warning", "error", "critical"}:
                raise ValueError("must be one of debug, info, warning, error, critical")
        return value

    @field_validator("forwarded_allow_ips", mode="after")
    @classmethod
    def _forwarded_allow_ips(cls, value: str) -> str:
        # Gunicorn refuses what `ipaddress.ip_network` refuses (host bits set included); Uvicorn
        # under `handoffrail serve` would ignore it silently. Fail at start-up, naming it.
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or network: {exc}") from None
        return ",".join(entries)

    @field_validator("metrics_token", "sentry_dsn", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # compose files pass `${HR_METRICS_TOKEN:-}`: an empty token must not lock /metrics
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _cors_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                try:
                    parsed = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError('must be a JSON list such as ["https://app.example"]') from exc
                return parsed
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("tier_default", mode="before")
    @classmethod
    def _tier(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in {"free", "pro", "business"}:
                raise ValueError("must be one of free, pro, business")
        return value

    @field_validator("bootstrap_api_key", mode="before")
    @classmethod
    def _bootstrap_key(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return None
            if not KEY_PATTERN.match(value.strip()):
                raise ValueError(
                    "must look like a generated key: 'hr_' followed by 43 URL-safe characters "
                    "(make one with: handoffrail keys generate)"
                )
            return value.strip()
        return value

    @field_validator("tier_quotas", mode="after")
    @classmethod
    def _tier_quotas(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_overrides(value)  # raises with the bad tier/key named
            return value
        return None

    @cached_property
    def tiers(self) -> dict[str, Quotas]:
        """The tier table with `HR_TIER_QUOTAS` applied."""
        return parse_overrides(self.tier_quotas)

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        """Staging and production: PostgreSQL, a random secret of at least 32 characters, an
        explicit CORS list, no debug mode (DEPLOY.md); production also no private webhook
        targets (staging may test against receivers on a private network)."""
        if self.environment is Environment.DEVELOPMENT:
            return self
        where = self.environment.value
        if self.is_sqlite:
            raise ValueError(
                f"HR_DATABASE_URL: SQLite is for development only; set a PostgreSQL URL in {where}"
            )
        secret = self.secret_key.get_secret_value()
        if len(secret) < 32 or "change-me" in secret or "changeme" in secret.lower():
            raise ValueError(
                f"HR_SECRET_KEY: {where} needs a random secret of at least 32 characters "
                "(python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if "*" in self.cors_origins:
            raise ValueError(
                f"HR_CORS_ORIGINS: '*' is refused in {where}; list the allowed origins"
            )
        if self.debug:
            raise ValueError(f"HR_DEBUG: debug mode is refused in {where}; unset HR_DEBUG")
        if self.environment is Environment.PRODUCTION and self.webhook_allow_private:
            raise ValueError(
                "HR_WEBHOOK_ALLOW_PRIVATE: private webhook targets are refused in production"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        """True when the database is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")

    @property
    def is_development(self) -> bool:
        """True in the development environment."""
        return self.environment is Environment.DEVELOPMENT


#: variables platforms and libraries set without our prefix, read when the `HR_` one is absent:
#: `fly postgres attach`, Render, Railway and Heroku-style add-ons inject DATABASE_URL and
#: REDIS_URL; Sentry's own variable is SENTRY_DSN (CONTRACT.md §8: the original read plain
#: DATABASE_URL)
UNPREFIXED = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL", "sentry_dsn": "SENTRY_DSN"}


def _unprefixed(overrides: dict[str, Any]) -> dict[str, str]:
    """(field → variable) of the fallbacks in force for this environment."""
    present = {name.upper() for name in os.environ}
    return {
        field: variable
        for field, variable in UNPREFIXED.items()
        if field not in overrides
        and f"HR_{field.upper()}" not in present
        and variable in os.environ
    }


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, turning pydantic errors into one `SettingsError`."""
    fallbacks = _unprefixed(overrides)
    values: dict[str, Any] = {field: os.environ[name] for field, name in fallbacks.items()}
    try:
        return Settings(**values, **overrides)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            location = ".".join(str(part) for part in error["loc"])
            variable = fallbacks.get(location) or (
                f"HR_{location.upper()}" if location else "settings"
            )
            text = str(error["msg"]).removeprefix("Value error, ")
            if text.startswith("HR_"):
                messages.append(text)
            else:
                messages.append(f"{variable}: {text}")
        raise SettingsError("; ".join(messages)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (cached); tests build `Settings` directly instead."""
    return load_settings()
