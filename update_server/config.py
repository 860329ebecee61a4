"""Typed server configuration from a TOML file and ``EDGEPKG_SERVER_*`` environment variables.

Precedence: defaults < TOML file < environment < explicit overrides. Example TOML::

    database_url = "postgresql+psycopg://edgepkg@db/edgepkg"
    repo_dir = "/srv/edgepkg/repo"
    poll_interval = 180
    secret_key = "..."            # or EDGEPKG_SERVER_SECRET_KEY
    key_service_key = "pkcs11:token=keysvc;object=key-service;type=private?pin-source=env:PIN"
    grant_lifetime_s = 604800     # key grants last 7 days (docs/operator.md, "Key service")

Environment: ``EDGEPKG_SERVER_DATABASE_URL``, ``EDGEPKG_SERVER_REPO_DIR``,
``EDGEPKG_SERVER_POLL_INTERVAL`` ... (the field name upper-cased); ``EDGEPKG_SERVER_CONFIG`` names
the TOML file for the WSGI entry point.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from update_server.errors import ConfigError

ENV_PREFIX = "EDGEPKG_SERVER_"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    database_url: str = "sqlite:///edgepkg-server.db"
    repo_dir: Path | None = None
    poll_interval: int = 300
    secret_key: str = ""
    max_content_length: int = 1024 * 1024
    signature_window_s: int = 300
    max_events_per_batch: int = 500
    max_models_per_checkin: int = 64
    enrollment_open: bool = False
    metadata_max_age_s: int = 0
    targets_max_age_s: int = 31536000
    db_pool_size: int = 5
    db_pool_pre_ping: bool = False
    session_cookie_secure: bool = False
    metrics_public: bool = False
    # Key service (update_server.grants): the P-256 key bundles are packaged for with
    # ``edgepkg package --key-service``; a pkcs11: URI (production) or a PEM path (development
    # only, warned at start-up). Empty: no grants, devices must be direct recipients.
    key_service_key: str = ""
    grant_lifetime_s: int = 7 * 86400
    # Field telemetry (update_server.telemetry): retention of raw intervals and of the hourly
    # cohort rollups; reports accepted per device per minute / per day; how long without a
    # report before a device that sent telemetry is "dark".
    telemetry_raw_retention_days: int = 14
    telemetry_rollup_retention_days: int = 400
    telemetry_max_per_minute: int = 10
    telemetry_max_per_day: int = 2000
    telemetry_dark_after_s: int = 3 * 3600
    # Signed webhooks (update_server.webhooks): a JSON list of {"url": ..., "secret": ...}
    # (secret: at least 16 characters), or empty for none.
    webhooks: str = ""
    webhook_max_attempts: int = 8
    testing: bool = False

    def __post_init__(self) -> None:
        if self.poll_interval < 1:
            raise ConfigError("poll_interval must be at least 1 second")
        if self.max_content_length < 1024:
            raise ConfigError("max_content_length must be at least 1024 bytes")
        if not 1 <= self.signature_window_s <= 3600:
            raise ConfigError("signature_window_s must be between 1 and 3600")
        if self.max_events_per_batch < 1:
            raise ConfigError("max_events_per_batch must be at least 1")
        if not 300 <= self.grant_lifetime_s <= 366 * 86400:
            raise ConfigError("grant_lifetime_s must be between 300 seconds and 366 days")
        if not 1 <= self.telemetry_raw_retention_days <= self.telemetry_rollup_retention_days:
            raise ConfigError(
                "telemetry_raw_retention_days must be at least 1 and at most "
                "telemetry_rollup_retention_days"
            )
        if self.telemetry_max_per_minute < 1 or self.telemetry_max_per_day < 1:
            raise ConfigError("telemetry_max_per_minute and telemetry_max_per_day must be >= 1")
        if self.telemetry_dark_after_s < 60:
            raise ConfigError("telemetry_dark_after_s must be at least 60 seconds")
        if not 1 <= self.webhook_max_attempts <= 50:
            raise ConfigError("webhook_max_attempts must be between 1 and 50")


_FIELDS = {f.name: f for f in dataclasses.fields(ServerConfig)}


def _coerce(name: str, value: Any) -> Any:
    field_type = str(_FIELDS[name].type)
    try:
        if field_type == "int":
            if isinstance(value, bool):
                raise ValueError("boolean")
            return int(value)
        if field_type == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if field_type == "Path | None":
            return None if value in (None, "") else Path(str(value))
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return value
    except ValueError as exc:
        raise ConfigError(f"config value {name!r} is invalid: {exc}") from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ServerConfig:
    """Build a :class:`ServerConfig`; unknown keys are an error, not silently ignored."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is None:
        path = env.get(ENV_PREFIX + "CONFIG") or None
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        section = data.get("server", data)
        for key, value in section.items():
            if key not in _FIELDS:
                raise ConfigError(f"unknown config key {key!r} in {path}")
            values[key] = _coerce(key, value)
    for key in _FIELDS:
        env_value = env.get(ENV_PREFIX + key.upper())
        if env_value is not None:
            values[key] = _coerce(key, env_value)
    for key, value in overrides.items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown config key {key!r}")
        values[key] = _coerce(key, value) if value is not None else None
    if not values.get("secret_key"):
        # A random key works for one process; gunicorn workers need a shared one.
        values["secret_key"] = secrets.token_hex(32)
    return ServerConfig(**values)
