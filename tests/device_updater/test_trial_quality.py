"""Trial quality: the model on trial against the previous model's baseline on the device (pure
comparison) and the rolling per-version baseline store."""

from __future__ import annotations

from pathlib import Path

from device_updater.trial import HealthReport, TrialDecision
from device_updater.trial_quality import (
    MAX_ROWS,
    BaselineStore,
    QualitySummary,
    apply_quality,
    judge_quality,
    summarize,
)
from edgepkg.policy import TrialRule

RULE = TrialRule(max_latency_ratio=1.5, max_error_rate=0.05, max_metric_drop=0.05,
                 min_reports=3)


def reports(n: int, *, p95: float | None = 10.0, errors: int = 0, inferences: int = 100,
            metric: float | None = None, version: str = "1.0.0", t0: float = 0.0,
            ) -> list[HealthReport]:
    return [HealthReport(time=t0 + i, status="healthy", model="clf", version=version,
                         inferences=inferences, errors=errors, latency_p95_ms=p95,
                         metric=metric) for i in range(n)]


def test_latency_regression_rolls_back_with_the_numbers() -> None:
    verdict, reason = judge_quality(RULE, summarize(reports(5, p95=14.6)),
                                    summarize(reports(3, p95=31.0, version="2.0.0")))
    assert verdict == "rollback"
    assert reason == ("trial: p95 latency 31.0 ms is 2.1x the previous model's 14.6 ms "
                      "(policy 1.5x)")


def test_within_policy_is_ok() -> None:
    verdict, reason = judge_quality(RULE, summarize(reports(5, p95=10.0, metric=0.9)),
                                    summarize(reports(3, p95=12.0, metric=0.88)))
    assert verdict == "ok" and "1.20x" in reason


def test_error_rate_over_the_ceiling_rolls_back() -> None:
    verdict, reason = judge_quality(RULE, summarize(reports(5, errors=1)),
                                    summarize(reports(3, errors=10)))
    assert verdict == "rollback"
    assert "error rate 10.0% (30 of 300 inferences)" in reason and "previous model 1.0%" in reason


def test_metric_drop_rolls_back() -> None:
    verdict, reason = judge_quality(RULE, summarize(reports(5, metric=0.92)),
                                    summarize(reports(4, metric=0.80)))
    assert verdict == "rollback" and "0.1200 below the previous model's 0.9200" in reason


def test_too_few_trial_reports_waits_and_too_small_a_baseline_is_not_compared() -> None:
    assert judge_quality(RULE, summarize(reports(5)), summarize(reports(2, p95=99)))[0] == "wait"
    verdict, reason = judge_quality(RULE, summarize(reports(2, p95=1.0)),
                                    summarize(reports(3, p95=99.0)))
    assert verdict == "ok" and "latency not compared" in reason
    assert judge_quality(RULE, None, summarize(reports(3, p95=99.0)))[0] == "ok"


def test_apply_quality_overrides_commit_and_waits_until_the_deadline() -> None:
    commit = TrialDecision("commit", "healthy after 600s and 300 inferences", 300)
    base = summarize(reports(5, p95=10.0))
    slow = summarize(reports(3, p95=30.0))
    assert apply_quality(commit, RULE, base, slow, past_deadline=False).action == "rollback"
    few = summarize(reports(1))
    assert apply_quality(commit, RULE, base, few, past_deadline=False).action == "wait"
    late = apply_quality(TrialDecision("wait", "running"), RULE, base, few, past_deadline=True)
    assert late.action == "rollback" and "1 of 3 reports" in late.reason
    ok = apply_quality(commit, RULE, base, summarize(reports(3)), past_deadline=False)
    assert ok.action == "commit" and "trial quality" in ok.reason
    failing = TrialDecision("rollback", "the app reported 1 failure(s)")
    assert apply_quality(failing, RULE, base, few, past_deadline=False) is failing
    assert apply_quality(commit, None, base, slow, past_deadline=False) is commit


def test_baseline_store_rolls_and_keeps_versions_apart(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path / "quality-baseline.json")
    log = reports(3, p95=10.0) + reports(2, p95=50.0, version="2.0.0", t0=10)
    store.record("clf", "1.0.0", log)
    store.record("clf", "1.0.0", log)  # folding the same reports again adds nothing
    s = store.summary("1.0.0")
    assert s == QualitySummary(reports=3, p95_ms=10.0, p95_reports=3, inferences=300)
    assert store.summary("2.0.0") is None
    store.record("clf", "1.0.0", reports(MAX_ROWS + 20, p95=12.0, t0=100))
    s = store.summary("1.0.0")
    assert s is not None and s.reports == MAX_ROWS and s.p95_ms == 12.0
    store.record("other", "1.0.0", [HealthReport(time=1e6, status="healthy", model="other",
                                                 version="1.0.0", latency_p95_ms=1.0)])
    s = store.summary("1.0.0")
    assert s is not None and s.p95_ms == 12.0  # another model's reports are not folded in


def test_damaged_baseline_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "quality-baseline.json"
    path.write_text("{not json")
    store = BaselineStore(path)
    assert store.summary("1.0.0") is None
    store.record("clf", "1.0.0", reports(3))
    assert store.summary("1.0.0") is not None
