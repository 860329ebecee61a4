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
    # Login throttling (operators/throttle.py): free failures per username / per address,
    # then a lockout of base * 2**(extra failures) seconds, capped; counters reset after window.
    login_user_free_failures: int = 5
    login_ip_free_failures: int = 20
    login_lockout_base_s: int = 2
    login_lockout_max_s: int = 3600
    login_failure_window_s: int = 900
    # Per-device quotas (devices/quotas.py); 0 switches a limit off.
    device_events_per_minute: int = 1200
    device_events_per_day: int = 50000
    device_event_bytes_per_day: int = 64 * 1024 * 1024
    device_telemetry_per_minute: int = 120
    device_telemetry_per_day: int = 20000
    device_telemetry_bytes_per_day: int = 64 * 1024 * 1024
    # Reverse proxies in front that set X-Forwarded-For/-Proto (nginx: 1). 0 trusts none, so
    # the client address of throttling is the socket peer.
    proxy_hops: int = 0
    # Four-eyes rule (update_server.approvals): comma-separated model names whose rollouts wait
    # for a second person's approval, or "*" for every model; empty: no approvals needed.
    approval_required: str = ""
    # OpenID Connect sign-in (update_server.operators.oidc); off while oidc_issuer is empty.
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_redirect_uri: str = ""
    # Claim holding the user's groups, and "group=role" pairs (comma-separated); a user whose
    # groups map to no role is refused. The strongest mapped role wins.
    oidc_groups_claim: str = "groups"
    oidc_role_map: str = ""

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
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"{f.name} must not be negative (got {value})")
        if 0 < self.device_events_per_minute < self.max_events_per_batch:
            raise ConfigError(
                "device_events_per_minute must be 0 (off) or at least max_events_per_batch, "
                "or a full batch could never be accepted"
            )
        if self.login_user_free_failures < 1 or self.login_ip_free_failures < 1:
            raise ConfigError("login_*_free_failures must be at least 1")
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


_INT_MAX = 2**63 - 1


def _coerce(name: str, value: Any) -> Any:
    """One field's value from TOML, the environment or an override, checked as strictly as API
    input: ints in the signed 64-bit range, strings without NUL or lone surrogates."""
    field_type = str(_FIELDS[name].type)
    try:
        if isinstance(value, str):
            if "\x00" in value:
                raise ValueError("contains a NUL character")
            value.encode("utf-8")  # a lone surrogate (from os.environ's surrogateescape) fails
        if field_type == "int":
            if isinstance(value, bool):
                raise ValueError("boolean")
            if isinstance(value, float):
                raise ValueError("expected an integer, got a number with a fraction or NaN")
            if isinstance(value, str) and len(value.strip()) > 19:
                raise ValueError("integer out of range")
            n = int(value)
            if not -_INT_MAX - 1 <= n <= _INT_MAX:
                raise ValueError("integer out of range")
            return n
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
    except (ValueError, UnicodeError) as exc:
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
