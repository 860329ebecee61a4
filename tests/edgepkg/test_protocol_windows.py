"""The pure maintenance-window evaluator (edgepkg.protocol._windows): cron fields, time zones,
daylight-saving transitions, strict parsing."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from edgepkg.errors import ProtocolError
from edgepkg.protocol import (
    next_window_open,
    parse_assignment,
    parse_maintenance_window,
    window_open,
)

BERLIN = ZoneInfo("Europe/Berlin")


def at(*args: int, tz: ZoneInfo = BERLIN, fold: int = 0) -> float:
    return dt.datetime(*args, tzinfo=tz, fold=fold).timestamp()  # type: ignore[misc,arg-type]



def test_daily_window_is_open_only_inside_its_local_hours() -> None:
    win = parse_maintenance_window({"cron": "0 2 * * *", "duration": "2h",
                                    "tz": "Europe/Berlin"})
    assert not window_open(win, at(2026, 6, 1, 1, 59))
    assert window_open(win, at(2026, 6, 1, 2, 0))
    assert window_open(win, at(2026, 6, 1, 3, 59))
    assert not window_open(win, at(2026, 6, 1, 4, 0))
    # the same instant is 00:30 UTC: the zone, not UTC, decides
    assert window_open(win, dt.datetime(2026, 6, 1, 0, 30, tzinfo=dt.UTC).timestamp())


def test_time_zone_changes_the_instant() -> None:
    tokyo = parse_maintenance_window({"cron": "0 2 * * *", "duration": "1h",
                                      "tz": "Asia/Tokyo"})
    assert window_open(tokyo, at(2026, 6, 1, 2, 30, tz=ZoneInfo("Asia/Tokyo")))
    assert not window_open(tokyo, at(2026, 6, 1, 2, 30))  # 02:30 in Berlin


def test_spring_forward_skips_the_nonexistent_hour_but_later_windows_open() -> None:
    # 2026-03-29 02:00 CET jumps to 03:00 CEST: 02:xx does not exist that night.
    win = parse_maintenance_window({"cron": "0 2 * * *", "duration": "1h",
                                    "tz": "Europe/Berlin"})
    assert not any(window_open(win, at(2026, 3, 29, 3, m)) for m in range(0, 60, 5))
    assert window_open(win, at(2026, 3, 30, 2, 15))
    wide = parse_maintenance_window({"cron": "0 1-4 * * *", "duration": "1h",
                                     "tz": "Europe/Berlin"})
    assert window_open(wide, at(2026, 3, 29, 3, 30))


def test_fall_back_opens_the_repeated_hour_twice() -> None:
    # 2026-10-25 03:00 CEST falls back to 02:00 CET: 02:xx happens twice.
    win = parse_maintenance_window({"cron": "0 2 * * *", "duration": "30m",
                                    "tz": "Europe/Berlin"})
    first = at(2026, 10, 25, 2, 10, fold=0)
    second = at(2026, 10, 25, 2, 10, fold=1)
    assert second - first == 3600
    assert window_open(win, first) and window_open(win, second)
    assert not window_open(win, first + 1800)  # 02:40 CEST: first window closed


def test_day_of_week_and_month_fields() -> None:
    sundays = parse_maintenance_window({"cron": "30 23 * * 0", "duration": "10m", "tz": "UTC"})
    utc = ZoneInfo("UTC")
    assert window_open(sundays, at(2026, 12, 6, 23, 35, tz=utc))  # a Sunday
    assert not window_open(sundays, at(2026, 12, 7, 23, 35, tz=utc))
    seven = parse_maintenance_window({"cron": "30 23 * * 7", "duration": "10m", "tz": "UTC"})
    assert window_open(seven, at(2026, 12, 6, 23, 35, tz=utc))
    # both restricted: either matches (classic cron)
    either = parse_maintenance_window({"cron": "0 0 1 * 1", "duration": "1h", "tz": "UTC"})
    assert window_open(either, at(2026, 12, 1, 0, 5, tz=utc))  # 1st, a Tuesday
    assert window_open(either, at(2026, 12, 7, 0, 5, tz=utc))  # a Monday
    assert not window_open(either, at(2026, 12, 8, 0, 5, tz=utc))
    steps = parse_maintenance_window({"cron": "*/15 9-17/4 * 1,7 *", "duration": "1m",
                                      "tz": "UTC"})
    assert window_open(steps, at(2026, 7, 3, 13, 45, tz=utc))
    assert not window_open(steps, at(2026, 7, 3, 14, 45, tz=utc))
    assert not window_open(steps, at(2026, 8, 3, 13, 45, tz=utc))


def test_window_crosses_midnight() -> None:
    win = parse_maintenance_window({"cron": "0 23 * * 5", "duration": "3h", "tz": "UTC"})
    utc = ZoneInfo("UTC")
    assert window_open(win, at(2026, 12, 5, 1, 30, tz=utc))  # Saturday 01:30, opened Friday
    assert not window_open(win, at(2026, 12, 5, 2, 0, tz=utc))


def test_next_window_open() -> None:
    win = parse_maintenance_window({"cron": "0 2 * * *", "duration": "1h",
                                    "tz": "Europe/Berlin"})
    assert next_window_open(win, at(2026, 6, 1, 12, 0)) == at(2026, 6, 2, 2, 0)
    now = at(2026, 6, 1, 2, 30)
    assert next_window_open(win, now) == now
    never = parse_maintenance_window({"cron": "0 0 30 2 *", "duration": "1h", "tz": "UTC"})
    assert next_window_open(never, now) is None


@pytest.mark.parametrize("raw", [
    None, [], "0 2 * * *",
    {"cron": "0 2 * *", "duration": "1h", "tz": "UTC"},
    {"cron": "60 2 * * *", "duration": "1h", "tz": "UTC"},
    {"cron": "0 24 * * *", "duration": "1h", "tz": "UTC"},
    {"cron": "0 2 0 * *", "duration": "1h", "tz": "UTC"},
    {"cron": "0 2 * * 8", "duration": "1h", "tz": "UTC"},
    {"cron": "0 5-2 * * *", "duration": "1h", "tz": "UTC"},
    {"cron": "*/0 2 * * *", "duration": "1h", "tz": "UTC"},
    {"cron": "0 2 * * MON", "duration": "1h", "tz": "UTC"},
    {"cron": "@daily", "duration": "1h", "tz": "UTC"},
    {"cron": "0 2 * * *", "duration": "25h", "tz": "UTC"},
    {"cron": "0 2 * * *", "duration": "0m", "tz": "UTC"},
    {"cron": "0 2 * * *", "duration": "2 hours", "tz": "UTC"},
    {"cron": "0 2 * * *", "duration": 7200, "tz": "UTC"},
    {"cron": "0 2 * * *", "duration": "1h", "tz": "Mars/Olympus"},
    {"cron": "0 2 * * *", "duration": "1h", "tz": "../../etc/passwd"},
    {"cron": "0 2 * * *", "duration": "1h", "tz": "UTC", "extra": 1},
    {"cron": "0 " * 60, "duration": "1h", "tz": "UTC"},
])
def test_malformed_windows_are_refused_with_the_field(raw: object) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_maintenance_window(raw)
    assert "maintenance_window" in str(info.value.field)


def test_window_round_trips_and_defaults_to_utc() -> None:
    win = parse_maintenance_window({"cron": "0  2 * * *", "duration": "90m"})
    assert win.to_json() == {"cron": "0 2 * * *", "duration": "1h30m", "tz": "UTC"}
    assert parse_maintenance_window(win.to_json()) == win


def test_assignment_carries_an_optional_window() -> None:
    base = {"action": "install", "model": "m", "version": "1.0.0", "target": "m/1.0.0"}
    assert parse_assignment(base).maintenance_window is None
    assert "maintenance_window" not in parse_assignment(base).to_json()
    win = {"cron": "0 2 * * *", "duration": "2h", "tz": "Europe/Berlin"}
    a = parse_assignment({**base, "maintenance_window": win})
    assert a.maintenance_window is not None and a.to_json()["maintenance_window"] == win
    assert parse_assignment(a.to_json()) == a
    with pytest.raises(ProtocolError):
        parse_assignment({**base, "maintenance_window": {"cron": "x", "duration": "1h"}})
