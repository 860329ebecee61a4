"""Trial after the switch: commit when healthy, roll back on failures/crash loops/silence."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_updater.errors import HealthLogError
from device_updater.trial import (
    HealthLog,
    HealthReport,
    TrialPolicy,
    TrialState,
    evaluate_trial,
)

T0 = 1_800_000_000.0
TRIAL = TrialState(model="cam", version="2.0.0", started_at=T0, sha256="2" * 64)
POLICY = TrialPolicy(window_seconds=300, min_inferences=100, max_failures=2)


def rep(dt: float, status: str = "healthy", inferences: int = 0, **kw: object) -> HealthReport:
    return HealthReport(time=T0 + dt, status=status, model="cam",  # type: ignore[arg-type]
                        version=kw.pop("version", "2.0.0"), inferences=inferences,  # type: ignore[arg-type]
                        **kw)  # type: ignore[arg-type]


def test_commit_when_healthy_after_window_and_enough_inferences() -> None:
    d = evaluate_trial(TRIAL, [rep(10, inferences=60), rep(200, inferences=60)], T0 + 301, POLICY)
    assert d.action == "commit" and d.inferences == 120


def test_wait_while_window_not_over_even_if_healthy() -> None:
    d = evaluate_trial(TRIAL, [rep(10, inferences=500)], T0 + 100, POLICY)
    assert d.action == "wait"


def test_wait_until_enough_inferences() -> None:
    d = evaluate_trial(TRIAL, [rep(10, inferences=5)], T0 + 400, POLICY)
    assert d.action == "wait"


def test_rollback_on_reported_failures() -> None:
    reports = [rep(10, inferences=50), rep(20, "failing", message="NaN outputs"),
               rep(30, "failing", message="cannot load model")]
    d = evaluate_trial(TRIAL, reports, T0 + 31, POLICY)
    assert d.action == "rollback" and "cannot load model" in d.reason and d.failures == 2


def test_rollback_on_app_crash_loop() -> None:
    reports = [rep(i, "started") for i in range(5)]
    d = evaluate_trial(TRIAL, reports, T0 + 6, POLICY)
    assert d.action == "rollback" and "crash loop" in d.reason


def test_rollback_when_never_confirmed_by_the_deadline() -> None:
    assert evaluate_trial(TRIAL, [], T0 + 599, POLICY).action == "wait"
    d = evaluate_trial(TRIAL, [], T0 + 600, POLICY)
    assert d.action == "rollback" and "no healthy report" in d.reason


def test_reports_about_the_old_model_or_before_the_trial_do_not_count() -> None:
    stale = [rep(-5, inferences=1000), rep(10, inferences=1000, version="1.0.0"),
             rep(20, "failing", version="1.0.0"), rep(30, "failing", version="1.0.0"),
             rep(40, inferences=1000, sha256="1" * 64)]
    d = evaluate_trial(TRIAL, stale, T0 + 301, POLICY)
    assert d.action == "wait" and d.inferences == 0 and d.failures == 0


def test_clock_stepping_back_never_commits_early() -> None:
    d = evaluate_trial(TRIAL, [rep(0, inferences=500)], T0 - 10_000, POLICY)
    assert d.action == "wait"


def test_health_log_persists_and_bounds(tmp_path: Path) -> None:
    log = HealthLog(tmp_path / "health.json", max_reports=3)
    for i in range(5):
        log.append(rep(i, inferences=i))
    again = HealthLog(tmp_path / "health.json").read()
    assert [r.inferences for r in again] == [2, 3, 4]
    assert [r.inferences for r in log.read(since=T0 + 3)] == [3, 4]
    log.clear()
    assert log.read() == []


def test_damaged_health_log_reads_as_empty(tmp_path: Path) -> None:
    (tmp_path / "health.json").write_bytes(b"\x00{not json")
    assert HealthLog(tmp_path / "health.json").read() == []


@pytest.mark.parametrize("bad", [
    {"time": T0, "status": "great"}, {"status": "healthy"}, {"time": "x", "status": "healthy"},
    {"time": T0, "status": "healthy", "inferences": -1},
    {"time": T0, "status": "healthy", "latency_p95_ms": float("inf")},
    {"time": T0, "status": "healthy", "message": "x" * 5000},
])
def test_malformed_health_report_is_refused(bad: dict) -> None:
    with pytest.raises(HealthLogError):
        HealthReport.from_dict(bad)
