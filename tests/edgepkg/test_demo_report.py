"""The demo's verdict logic (pure): every expectation is checked explicitly and a broken run
cannot pass. Fast; the full run is tests/test_demo.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgepkg.demo._devices import Device
from edgepkg.demo._report import DemoReport, DeviceResult, format_report
from edgepkg.demo._rollouts import Tracker, canaries
from edgepkg.demo._summary import _checks
from edgepkg.demo._workspace import make_workspace
from edgepkg.errors import UsageError


def _device(i: int) -> Device:
    return Device(
        i,
        f"device-{i:02d}",
        Path("/nonexistent"),
        Path("/nonexistent"),
        "softhsm2",
        device_id=f"{i:064x}",
    )


def _result(d: Device, version: str = "2.0.0", route: str = "delta") -> DeviceResult:
    return DeviceResult(
        d.name,
        d.device_id,
        "softhsm2",
        version,
        "committed",
        route,
        11000,
        43000,
        54000,
        86000,
        0.8,
        "not offered",
    )


def _tracker(version: str, status: str, stages_seen: list[int], **extra: Any) -> Tracker:
    t = Tracker("ro-1", version, [20.0, 100.0], stages_seen)
    t.last = {"status": status, "stage": stages_seen[-1], "totals": {}, **extra}
    return t


def _ev(type_: str, version: str, **details: Any) -> dict[str, Any]:
    return {"type": type_, "version": version, "details": details}


def _good_run() -> tuple[
    DemoReport, list[Device], dict[str, list[dict[str, Any]]], dict[str, Tracker]
]:
    devices = [_device(i) for i in range(1, 6)]
    report = DemoReport("/ws", "SoftHSM2", "http://x/dashboard/")
    report.devices = [_result(d) for d in devices]
    events: dict[str, list[dict[str, Any]]] = {d.device_id: [] for d in devices}
    events[devices[0].device_id] = [
        _ev("validation_result", "3.0.0", accepted=False),
        _ev("rejected", "3.0.0", reason="holdout validation failed: top1_accuracy 0.40 < 0.6"),
    ]
    trackers = {
        "bootstrap v1": _tracker("1.0.0", "completed", [1]),
        "staged v2": _tracker("2.0.0", "completed", [1, 2]),
        "staged v3": _tracker(
            "3.0.0",
            "paused",
            [1],
            totals={"admitted": 1},
            reason="stage 1: 1 of 1 finished devices failed",
        ),
    }
    return report, devices, events, trackers


def test_a_run_where_everything_happened_passes() -> None:
    report, devices, events, trackers = _good_run()
    _checks(report, devices, events, trackers, {"2.0.0": ["from 1.0.0"]})
    assert report.ok, [c for c in report.checks if not c.ok]
    assert "RESULT: every expectation held" in format_report(report)


def test_a_device_that_ran_v3_in_a_trial_fails_the_demo() -> None:
    report, devices, events, trackers = _good_run()
    events[devices[1].device_id] = [_ev("trial_started", "3.0.0")]
    _checks(report, devices, events, trackers, {"2.0.0": ["from 1.0.0"]})
    assert not report.ok
    failed = [c.what for c in report.checks if not c.ok]
    assert any("no device ever ran v3" in w for w in failed)
    assert "FAILED" in format_report(report)


def test_a_v3_rollout_that_did_not_pause_fails_the_demo() -> None:
    report, devices, events, trackers = _good_run()
    trackers["staged v3"] = _tracker("3.0.0", "running", [1, 2], totals={"admitted": 1})
    _checks(report, devices, events, trackers, {"2.0.0": ["from 1.0.0"]})
    assert [c.what for c in report.checks if not c.ok] == [
        "v3 rollout paused itself at its first stage"
    ]


def test_a_rejection_without_validation_reason_fails_the_demo() -> None:
    report, devices, events, trackers = _good_run()
    events[devices[0].device_id] = [_ev("rejected", "3.0.0", reason="download failed")]
    _checks(report, devices, events, trackers, {"2.0.0": ["from 1.0.0"]})
    assert not report.ok


def test_full_downloads_for_most_devices_fail_the_delta_expectation() -> None:
    report, devices, events, trackers = _good_run()
    report.devices = [_result(d, route="full") for d in devices[:3]] + [
        _result(d) for d in devices[3:]
    ]
    _checks(report, devices, events, trackers, {"2.0.0": ["from 1.0.0"]})
    assert [c.what for c in report.checks if not c.ok] == ["most devices got v2 through a delta"]


def test_a_stopped_run_is_never_ok() -> None:
    report, devices, events, trackers = _good_run()
    _checks(report, devices, events, trackers, {"2.0.0": ["from 1.0.0"]})
    report.error = "interrupted (Ctrl-C)"
    assert not report.ok
    assert "the demo stopped: interrupted" in format_report(report)
    assert not DemoReport("/ws", "files", "").ok  # no checks at all: not ok either


@pytest.mark.parametrize(
    ("n", "percent", "expected"),
    [(10, 20, 2), (4, 20, 1), (5, 20, 1), (1, 20, 1), (100, 5, 5), (11, 20, 3)],
)
def test_canary_count_matches_the_servers_stage_size(n: int, percent: float, expected: int) -> None:
    assert canaries(n, percent) == expected


def test_workspace_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        make_workspace(str(tmp_path))
    ws = make_workspace(str(tmp_path / "new"))
    assert ws.repo.parent.is_dir() and not ws.temporary
