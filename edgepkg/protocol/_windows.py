"""Maintenance windows: when a device may switch to a new model (pure, stdlib only).

A window is a 5-field cron expression (minute hour day-of-month month day-of-week) that says
when the window *opens*, how long it stays open, and the IANA time zone the expression is read
in, e.g. ``{"cron": "0 2 * * *", "duration": "2h", "tz": "Europe/Berlin"}``. The window travels
with the assignment, so the device decides OFFLINE with its own clock: it downloads, verifies,
installs into the inactive slot and validates at any time, but switches only while a window is
open (:func:`window_open`).

Why a small evaluator instead of ``croniter``: this module is part of the device<->server
contract, which imports nothing outside the standard library (the device evaluates it with no
network and the server validates the same value with the same code).

Semantics, chosen so that daylight-saving changes never trap a device:

* A window is open at instant ``now`` if some *real* minute ``t`` in ``(now - duration, now]``
  has a local wall time (in ``tz``) that matches the expression. Time is walked in UTC minutes
  and each minute converted to local time, so:
* spring forward (02:00 -> 03:00 local): wall times 02:00-02:59 do not exist that day, so
  ``0 2 * * *`` does not open that night (as with most cron daemons run in UTC mode); a
  daily window therefore skips at most one night a year. Pick an hour outside 02:00-03:00 (or
  several hours, ``0 1-4 * * *``) when that matters;
* fall back (03:00 -> 02:00 local): 02:00-02:59 occurs twice, the window opens twice, i.e. it
  stays open longer, never shorter.
* Day-of-month and day-of-week: when both are restricted (neither is ``*``), a day matches if
  either matches (the classic cron rule); 0 and 7 are both Sunday.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edgepkg.errors import ProtocolError

MAX_WINDOW_SECONDS = 24 * 3600  # a window longer than a day is "always": say so without one
MIN_WINDOW_SECONDS = 60
MAX_CRON_CHARS = 100
MAX_TZ_CHARS = 64
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))
_DURATION_RE = re.compile(r"^(?:(\d{1,2})h)?(?:(\d{1,4})m)?$")
_TZ_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,2}$")
_ITEM_RE = re.compile(r"^(\*|\d{1,2}(?:-\d{1,2})?)(?:/(\d{1,2}))?$")


def _bad(message: str, field: str) -> ProtocolError:
    return ProtocolError(message, field=f"maintenance_window.{field}")


def _parse_field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        m = _ITEM_RE.match(item)
        if m is None:
            raise _bad(f"cron {name} field {text!r} is not valid: use *, N, N-M, lists and /step",
                       "cron")
        base, step_s = m.group(1), m.group(2)
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, b = base.split("-")
            start, end = int(a), int(b)
        else:
            start = end = int(base)
            if step_s is not None:  # "N/step" means N-max/step in Vixie cron
                end = hi
        step = int(step_s) if step_s is not None else 1
        if not (lo <= start <= end <= hi) or step < 1:
            raise _bad(f"cron {name} field {text!r} is out of range {lo}-{hi}", "cron")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """A parsed window; :meth:`to_json` gives the wire form (the original strings)."""

    cron: str
    duration_s: int
    tz: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6 = Saturday (7 folded into 0)
    any_day: bool
    any_weekday: bool

    def to_json(self) -> dict[str, Any]:
        return {"cron": self.cron, "duration": _fmt_duration(self.duration_s), "tz": self.tz}

    def matches(self, local: dt.datetime) -> bool:
        """Does the wall time ``local`` (minute resolution) open the window?"""
        if (local.minute not in self.minutes or local.hour not in self.hours
                or local.month not in self.months):
            return False
        dom = local.day in self.days
        dow = (local.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow


def _fmt_duration(seconds: int) -> str:
    h, m = divmod(seconds // 60, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if m or not h else "")


def parse_duration(text: Any) -> int:
    """``"2h"``, ``"90m"``, ``"1h30m"`` -> seconds, between 1 minute and 24 hours."""
    if not isinstance(text, str) or not text or len(text) > 10:
        raise _bad("duration must be a string such as '2h', '90m' or '1h30m'", "duration")
    m = _DURATION_RE.match(text)
    if m is None or not (m.group(1) or m.group(2)):
        raise _bad(f"duration {text!r} is not valid: use '2h', '90m' or '1h30m'", "duration")
    seconds = int(m.group(1) or 0) * 3600 + int(m.group(2) or 0) * 60
    if not MIN_WINDOW_SECONDS <= seconds <= MAX_WINDOW_SECONDS:
        raise _bad(f"duration {text!r} must be between 1 minute and 24 hours", "duration")
    return seconds


def parse_maintenance_window(raw: Any) -> MaintenanceWindow:
    """Parse an untrusted window object (exactly the keys cron, duration, tz)."""
    if not isinstance(raw, Mapping):
        raise ProtocolError("maintenance_window must be a JSON object",
                            field="maintenance_window")
    extra = set(raw) - {"cron", "duration", "tz"}
    if extra:
        raise ProtocolError(f"maintenance_window has unknown keys {sorted(map(str, extra))[:5]}",
                            field="maintenance_window")
    cron, tz = raw.get("cron"), raw.get("tz", "UTC")
    if not isinstance(cron, str) or not 0 < len(cron) <= MAX_CRON_CHARS:
        raise _bad(f"cron must be a 5-field cron string of at most {MAX_CRON_CHARS} characters",
                   "cron")
    parts = cron.split()
    if len(parts) != 5:
        raise _bad(f"cron {cron!r} must have 5 fields: minute hour day-of-month month "
                   "day-of-week (names and @macros are not supported)", "cron")
    sets = [_parse_field(p, name, lo, hi) for p, (name, lo, hi) in zip(parts, _FIELDS,
                                                                       strict=True)]
    if not isinstance(tz, str) or not 0 < len(tz) <= MAX_TZ_CHARS or not _TZ_RE.match(tz):
        raise _bad("tz must be an IANA time zone name such as 'Europe/Berlin' or 'UTC'", "tz")
    _zone(tz)
    return MaintenanceWindow(
        cron=" ".join(parts), duration_s=parse_duration(raw.get("duration")), tz=tz,
        minutes=sets[0], hours=sets[1], days=sets[2], months=sets[3],
        weekdays=frozenset(d % 7 for d in sets[4]),
        any_day=parts[2] == "*", any_weekday=parts[4] == "*")


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise _bad(f"unknown time zone {tz!r} ({exc.__class__.__name__})", "tz") from None


def window_open(window: MaintenanceWindow, now: float) -> bool:
    """Is ``window`` open at UNIX time ``now``? (See the module doc for DST semantics.)"""
    zone = _zone(window.tz)
    end = int(now // 60) * 60
    # At most 1440 minutes are walked (MAX_WINDOW_SECONDS): bounded work per check.
    for back in range(0, window.duration_s, 60):
        t = dt.datetime.fromtimestamp(end - back, tz=dt.UTC).astimezone(zone)
        if window.matches(t):
            return True
    return False


def next_window_open(window: MaintenanceWindow, now: float,
                     horizon_s: int = 366 * 86400) -> float | None:
    """The UNIX time the window is next open at or after ``now`` (``now`` if open now); None if
    it does not open within ``horizon_s`` (e.g. ``0 0 30 2 *``). For display and poll pacing."""
    if window_open(window, now):
        return now
    zone = _zone(window.tz)
    t = int(now // 60) * 60 + 60
    stop = now + horizon_s
    while t <= stop:
        local = dt.datetime.fromtimestamp(t, tz=dt.UTC).astimezone(zone)
        if local.month not in window.months:  # skip to the next month quickly
            t += 3600 * 24 - (local.hour * 3600 + local.minute * 60)
            continue
        if window.matches(local):
            return float(t)
        t += 60 if local.hour in window.hours else 3600 - local.minute * 60
    return None
