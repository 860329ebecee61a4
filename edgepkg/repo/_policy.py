"""Pure repository rules: durations, expiry decisions, names, version ordering.

Nothing here touches files or clocks: callers pass plain values and ``now``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from edgepkg.errors import ProtocolError, RepoError, UsageError
from edgepkg.protocol import (
    check_target_model,
    check_target_version,
    delta_target_name,
    full_target_name,
)

__all__ = [
    "DEFAULT_EXPIRES", "ONLINE_ROLES", "TOP_ROLES", "ExpiryState", "check_model_name",
    "check_newer", "check_version_text", "delta_target_name", "expiry_state", "format_duration",
    "full_target_name", "needs_resign", "parse_duration", "refresh_margin",
]

TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES = ("snapshot", "timestamp")

DEFAULT_EXPIRES = {"root": "365d", "targets": "90d", "snapshot": "7d", "timestamp": "1d"}

_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdwy])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}



def parse_duration(text: str) -> timedelta:
    """``"90d"`` -> 90 days. Units: s, m, h, d, w, y (365 d)."""
    match = _DURATION.match(text)
    if not match:
        raise UsageError(f"bad duration {text!r}: use a number and a unit s/m/h/d/w/y, e.g. 90d")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise UsageError(f"duration {text!r} must be positive")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit in ("y", "w", "d", "h", "m"):
        if seconds and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def refresh_margin(lifetime: timedelta) -> timedelta:
    """Re-sign an online role once less than half of its lifetime remains."""
    return lifetime / 2


def needs_resign(expires: datetime, lifetime: timedelta, now: datetime) -> bool:
    return expires - now <= refresh_margin(lifetime)


@dataclass(frozen=True)
class ExpiryState:
    role: str
    expires: datetime
    remaining: timedelta
    expired: bool
    warning: bool  # expires within the warning margin


def expiry_state(role: str, expires: datetime, lifetime: timedelta, now: datetime) -> ExpiryState:
    remaining = expires - now
    # Offline roles (root, targets) warn a long way ahead: a person has to act.
    margin = (
        refresh_margin(lifetime) if role in ONLINE_ROLES else min(lifetime / 4, timedelta(days=30))
    )
    return ExpiryState(role, expires, remaining, remaining <= timedelta(0), remaining <= margin)


# Target names are the device<->server contract: edgepkg.protocol owns them. The repository
# raises RepoError (its callers catch that), so the protocol's errors are translated here.


def check_model_name(name: str) -> str:
    try:
        return check_target_model(name)
    except ProtocolError as exc:
        raise RepoError(str(exc)) from None


def check_version_text(version: str) -> str:
    try:
        return check_target_version(version)
    except ProtocolError as exc:
        raise RepoError(str(exc)) from None


def check_newer(
    name: str, version: str, existing: Iterable[str], parse: Callable[[str], Any]
) -> None:
    """Raise unless ``version`` is greater than every version in ``existing`` (published or
    revoked) of the same model, by semantic-version order."""
    new_key = parse(version)
    newest = None
    for old in existing:
        if newest is None or parse(old) > parse(newest):
            newest = old
    if newest is not None and not new_key > parse(newest):
        raise RepoError(
            f"{name} {version} is not newer than {name} {newest}, already published or revoked: "
            "publish a greater version"
        )
