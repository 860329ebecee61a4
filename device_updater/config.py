"""The updater's TOML configuration (see ``device_updater/data/example-config.toml``).

Unknown keys are errors (a typo must not silently disable a setting). Paths are absolute or
relative to the config file's directory.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_updater.errors import ConfigError
from device_updater.telemetry.settings import (
    KEYS as TELEMETRY_KEYS,
    TelemetryConfig,
    parse_telemetry,
)

MAX_CONFIG_BYTES = 256 * 1024

_SECTIONS: dict[str, set[str]] = {
    "server": {"url", "tuf_metadata_url", "tuf_targets_url", "connect_timeout", "read_timeout"},
    "device": {"state_dir", "runtime_dir", "holdout_dir", "tags"},
    "keystore": {"type", "token_uri", "key_label", "dir", "tcti", "key_handle", "nv_index",
                 "pcr_binding", "pcrs"},
    "poll": {"interval", "jitter", "max_backoff"},
    "facts": None,  # type: ignore[dict-item]  # free-form: device facts override discovery
    "validation": {"timeout_s", "external_command"},
    "trial": {"window_s", "min_inferences", "max_failures"},
    "shadow": {"spool_dir", "max_samples_per_cycle", "max_files", "nice"},
    "log": {"level", "json"},
    "telemetry": TELEMETRY_KEYS,
}


@dataclass(frozen=True)
class Config:
    server_url: str
    state_dir: Path
    runtime_dir: Path
    holdout_dir: Path | None = None
    tags: tuple[str, ...] = ()
    tuf_metadata_url: str = ""
    tuf_targets_url: str = ""
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    keystore_type: str = "pkcs11"
    token_uri: str | None = None
    key_label: str = "edge-updater-device"
    keystore_dir: Path | None = None
    tcti: str | None = None
    tpm_key_handle: int | None = None
    tpm_nv_index: int | None = None
    # Slots bound to the TPM's measured state (sha256 bank); None: on for a tpm keystore.
    pcr_binding: bool | None = None
    pcrs: tuple[int, ...] = (0, 2, 4, 7)
    poll_interval: int = 300
    poll_jitter: float = 0.2
    max_backoff: int = 3600
    facts: dict[str, Any] = field(default_factory=dict)
    validation_timeout_s: float = 120.0
    external_command: tuple[str, ...] | None = None
    trial_window_s: float = 600.0
    trial_min_inferences: int = 0
    trial_max_failures: int = 3
    log_level: str = "INFO"
    log_json: bool = True
    # Shadow runs (docs/validation.md): where the app spools live samples, and the CPU share.
    shadow_spool_dir: Path | None = None
    shadow_max_samples_per_cycle: int = 64
    shadow_max_files: int = 1000
    shadow_nice: int = 10
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)

    def __post_init__(self) -> None:
        if not self.server_url.startswith(("http://", "https://")):
            raise ConfigError("server.url must be an http:// or https:// URL")
        if self.keystore_type not in ("pkcs11", "file", "tpm"):
            raise ConfigError("keystore.type must be 'pkcs11', 'tpm' or 'file'")
        if self.keystore_type == "pkcs11" and not self.token_uri:
            raise ConfigError(
                "keystore.token_uri (a pkcs11: URI) is required for a pkcs11 keystore")
        if self.keystore_type == "file" and self.keystore_dir is None:
            raise ConfigError("keystore.dir is required for a file keystore")
        if self.keystore_type == "tpm" and not self.tcti:
            raise ConfigError("keystore.tcti (e.g. 'device:/dev/tpmrm0' or "
                              "'swtpm:host=127.0.0.1,port=2321') is required for a tpm keystore")
        if self.pcr_binding and self.keystore_type != "tpm":
            raise ConfigError("keystore.pcr_binding needs a TPM: set keystore.type = \"tpm\" "
                              "or pcr_binding = false")
        if (not self.pcrs or len(set(self.pcrs)) != len(self.pcrs)
                or any(isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 23
                       for p in self.pcrs)):
            raise ConfigError("keystore.pcrs must list distinct PCR indices between 0 and 23, "
                              "e.g. [0, 2, 4, 7]")
        if not 1 <= self.poll_interval <= 7 * 86400:
            raise ConfigError("poll.interval must be between 1 and 604800 seconds")
        if not 0 <= self.poll_jitter <= 1:
            raise ConfigError("poll.jitter must be between 0 and 1 (a fraction of the interval)")
        if self.max_backoff < self.poll_interval:
            object.__setattr__(self, "max_backoff", self.poll_interval)
        if self.validation_timeout_s <= 0 or self.trial_window_s < 0:
            raise ConfigError("validation.timeout_s must be > 0 and trial.window_s >= 0")
        if not (1 <= self.shadow_max_samples_per_cycle <= 100_000 and self.shadow_max_files >= 1
                and 0 <= self.shadow_nice <= 19):
            raise ConfigError("shadow.max_samples_per_cycle must be 1-100000, shadow.max_files "
                              ">= 1 and shadow.nice 0-19")

    @property
    def metadata_url(self) -> str:
        return self.tuf_metadata_url or self.server_url.rstrip("/") + "/tuf/metadata/"

    @property
    def targets_url(self) -> str:
        return self.tuf_targets_url or self.server_url.rstrip("/") + "/tuf/targets/"


def _get(section: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    value = section.get(key)
    if value is None:
        return None
    allowed = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, bool) and typ is not bool and bool not in allowed:
        raise ConfigError(f"{where}.{key} has the wrong type")
    if not isinstance(value, typ):
        raise ConfigError(f"{where}.{key} has the wrong type ({type(value).__name__})")
    return value


def _path(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base / p


def parse_config(doc: dict[str, Any], base_dir: Path) -> Config:
    """Build a :class:`Config` from a parsed TOML document (pure apart from path joining)."""
    for name, value in doc.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown config section [{name}]")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
        allowed = _SECTIONS[name]
        if allowed is not None:
            extra = set(value) - allowed
            if extra:
                raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(sorted(extra))}")
    server = doc.get("server", {})
    device = doc.get("device", {})
    ks = doc.get("keystore", {})
    poll = doc.get("poll", {})
    val = doc.get("validation", {})
    trial = doc.get("trial", {})
    logc = doc.get("log", {})
    shadow = doc.get("shadow", {})
    url = _get(server, "url", str, "server")
    if not url:
        raise ConfigError("server.url is required")
    state_dir = _path(base_dir, _get(device, "state_dir", str, "device"))
    if state_dir is None:
        raise ConfigError("device.state_dir is required")
    runtime_dir = _path(base_dir, _get(device, "runtime_dir", str, "device")) or state_dir / "run"
    tags = _get(device, "tags", list, "device") or []
    if not all(isinstance(t, str) for t in tags):
        raise ConfigError("device.tags must be a list of strings")
    ext = _get(val, "external_command", list, "validation")
    if ext is not None and (not ext or not all(isinstance(a, str) for a in ext)):
        raise ConfigError("validation.external_command must be a non-empty list of strings")
    num = (int, float)
    kw: dict[str, Any] = {
        "server_url": url,
        "state_dir": state_dir,
        "runtime_dir": runtime_dir,
        "holdout_dir": _path(base_dir, _get(device, "holdout_dir", str, "device")),
        "tags": tuple(tags),
        "tuf_metadata_url": _get(server, "tuf_metadata_url", str, "server") or "",
        "tuf_targets_url": _get(server, "tuf_targets_url", str, "server") or "",
        "keystore_type": _get(ks, "type", str, "keystore") or "pkcs11",
        "token_uri": _get(ks, "token_uri", str, "keystore"),
        "key_label": _get(ks, "key_label", str, "keystore") or "edge-updater-device",
        "keystore_dir": _path(base_dir, _get(ks, "dir", str, "keystore")),
        "tcti": _get(ks, "tcti", str, "keystore"),
        "tpm_key_handle": _get(ks, "key_handle", int, "keystore"),
        "tpm_nv_index": _get(ks, "nv_index", int, "keystore"),
        "pcr_binding": _get(ks, "pcr_binding", bool, "keystore"),
        "facts": dict(doc.get("facts", {})),
        "external_command": tuple(ext) if ext else None,
        "shadow_spool_dir": _path(base_dir, _get(shadow, "spool_dir", str, "shadow")),
        "telemetry": parse_telemetry(doc.get("telemetry", {}), base_dir),
    }
    optional: list[tuple[str, dict[str, Any], str, Any, Any]] = [
        ("connect_timeout", server, "connect_timeout", num, float),
        ("read_timeout", server, "read_timeout", num, float),
        ("poll_interval", poll, "interval", int, int),
        ("poll_jitter", poll, "jitter", num, float),
        ("max_backoff", poll, "max_backoff", int, int),
        ("validation_timeout_s", val, "timeout_s", num, float),
        ("trial_window_s", trial, "window_s", num, float),
        ("trial_min_inferences", trial, "min_inferences", int, int),
        ("trial_max_failures", trial, "max_failures", int, int),
        ("log_level", logc, "level", str, str),
        ("log_json", logc, "json", bool, bool),
        ("shadow_max_samples_per_cycle", shadow, "max_samples_per_cycle", int, int),
        ("shadow_max_files", shadow, "max_files", int, int),
        ("shadow_nice", shadow, "nice", int, int),
    ]
    pcrs = _get(ks, "pcrs", list, "keystore")
    if pcrs is not None:
        kw["pcrs"] = tuple(pcrs)
    for attr, section, key, typ, conv in optional:
        value = _get(section, key, typ, "section")
        if value is not None:
            kw[attr] = conv(value)
    return Config(**kw)


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {p} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {p} is not valid TOML: {exc}") from exc
    return parse_config(doc, p.resolve().parent)
