"""The ``[telemetry]`` section of the updater's config.

::

    [telemetry]
    enabled = true
    socket = "/run/edge-updater/telemetry.sock"   # default: <runtime_dir>/telemetry.sock
    interval_s = 300                               # one report per interval
    daily_byte_budget = 1048576                    # JSON bytes sent per UTC day
    max_queued = 96                                # reports kept while offline (then merged)
    max_records_per_s = 500                        # from the app, beyond: dropped and counted
    capture_sample_rate = 0.0                      # raw-input capture, local spool only; 0 = off
    capture_max_files = 1000
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_updater.errors import ConfigError

KEYS = {"enabled", "socket", "interval_s", "daily_byte_budget", "max_queued",
        "max_records_per_s", "capture_sample_rate", "capture_max_files"}
DEFAULT_DAILY_BYTE_BUDGET = 1024 * 1024


@dataclass(frozen=True)
class TelemetryConfig:
    enabled: bool = True
    socket: Path | None = None
    interval_s: float = 300.0
    daily_byte_budget: int = DEFAULT_DAILY_BYTE_BUDGET
    max_queued: int = 96
    max_records_per_s: float = 500.0
    capture_sample_rate: float = 0.0
    capture_max_files: int = 1000

    def __post_init__(self) -> None:
        if not 10 <= self.interval_s <= 86400:
            raise ConfigError("telemetry.interval_s must be between 10 and 86400 seconds")
        if self.daily_byte_budget < 4096:
            raise ConfigError("telemetry.daily_byte_budget must be at least 4096 bytes "
                              "(one report of a small model)")
        if not 2 <= self.max_queued <= 10000:
            raise ConfigError("telemetry.max_queued must be between 2 and 10000")
        if self.max_records_per_s <= 0:
            raise ConfigError("telemetry.max_records_per_s must be > 0")
        if not 0.0 <= self.capture_sample_rate <= 1.0:
            raise ConfigError("telemetry.capture_sample_rate must be between 0 and 1")


def parse_telemetry(section: dict[str, Any], base_dir: Path) -> TelemetryConfig:
    kw: dict[str, Any] = {}
    types: dict[str, tuple[type, ...]] = {
        "enabled": (bool,), "socket": (str,), "interval_s": (int, float),
        "daily_byte_budget": (int,), "max_queued": (int,), "max_records_per_s": (int, float),
        "capture_sample_rate": (int, float), "capture_max_files": (int,)}
    for key, value in section.items():
        ok = isinstance(value, types[key]) and (key == "enabled" or not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"telemetry.{key} has the wrong type ({type(value).__name__})")
        kw[key] = value
    if "socket" in kw:
        p = Path(kw["socket"]).expanduser()
        kw["socket"] = p if p.is_absolute() else base_dir / p
    return TelemetryConfig(**kw)
