"""Telemetry alert rules and the field gate: pure functions, statistics against known values."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from edgepkg.protocol import HardwareHealth
from tests.update_server._telemetry_fixtures import T0, model
from update_server.alerts.rules import Baseline
from update_server.rollouts import field_gate as fg
from update_server.rollouts.engine import RolloutSpecError
from update_server.rollouts.spec import parse_field_gate, parse_spec
from update_server.telemetry import rules


def _check(bad: bool) -> rules.Check:
    return rules.Check("drift", "warning", "dev", bad, "PSI high" if bad else "ok", "det")


def test_hysteresis_opens_after_three_bad_and_resolves_after_three_good() -> None:
    state, seen = None, []
    for bad in (True, True, False, True, True, True, False, False, True, False, False, False):
        state, transition = rules.step(state, _check(bad), T0)
        seen.append(transition)
    assert seen == [None, None, None, None, None, "opened", None, None, None, None, None,
                    "resolved"]
    assert state is not None and not state.is_open


def test_model_checks_name_each_problem_and_skip_metrics_without_data() -> None:
    m = model(psi=0.4, p95=25.0, inferences=100, errors=9, labelled=40, correct=20)
    got = {c.kind: c for c in rules.model_checks("dev", "det", m, Baseline(10.0, 5))}
    assert all(c.bad for c in got.values())
    assert set(got) == {"drift", "field_accuracy", "field_latency", "error_rate"}
    assert "2.5x its baseline" in got["field_latency"].message
    quiet = model(psi=None, inferences=5, labelled=3, correct=0)
    assert rules.model_checks("dev", "det", quiet, Baseline(10.0, 1)) == []


def test_hardware_checks() -> None:
    hw = HardwareHealth(gpu_temp_c=86.0, disk_free_bytes=4.0, disk_total_bytes=100.0,
                        mem_used_bytes=50.0, mem_total_bytes=100.0)
    got = {c.kind: c.bad for c in rules.hardware_checks("d", hw)}
    assert got == {"hardware_temperature": True, "disk_nearly_full": True, "memory_high": False}


def test_cohort_drift_needs_enough_devices_and_uses_the_mean() -> None:
    assert rules.cohort_drift_check("det", "1", "*", [0.9, 0.9]) is None
    c = rules.cohort_drift_check("det", "1", "site:a", [0.1, 0.3, 0.5])
    assert c is not None and c.bad and c.subject == "det@1#site:a"
    ok = rules.cohort_drift_check("det", "1", "*", [0.1, 0.1, 0.1])
    assert ok is not None and not ok.bad


def test_dark_check() -> None:
    assert rules.dark_check("d", T0, T0 + dt.timedelta(hours=2), 3600).bad
    assert not rules.dark_check("d", T0, T0 + dt.timedelta(minutes=30), 3600).bad


# --- statistics ------------------------------------------------------------------------------


def test_normal_tail_matches_tables() -> None:
    assert fg.normal_sf(1.959964) == pytest.approx(0.025, abs=1e-6)
    assert fg.normal_sf(0.0) == pytest.approx(0.5)
    assert fg.normal_sf(-1.644854) == pytest.approx(0.95, abs=1e-6)


def test_mann_whitney_matches_scipy_asymptotic_values() -> None:
    # scipy.stats.mannwhitneyu(y, x, alternative="greater", method="asymptotic")
    x, y = [1, 2, 3, 4, 5], [6, 7, 8, 9, 10]
    u, p = fg.mann_whitney_greater(y, x)
    assert u == 25 and p == pytest.approx(0.006093, abs=2e-6)
    u, p = fg.mann_whitney_greater(x, y)
    assert u == 0 and p > 0.99
    # with ties (by hand): U=17.5, tie term 3^3-3 + 2*(2^3-2) = 36,
    # sigma^2 = 20/12 * (10 - 36/72) = 15.833, z = (17.5 - 10 - 0.5)/3.979 = 1.7592
    u, p = fg.mann_whitney_greater([2, 3, 4, 4, 5], [1, 2, 2, 3])
    assert u == pytest.approx(17.5) and p == pytest.approx(0.03927, abs=5e-5)


def test_two_proportion_z_test_known_value() -> None:
    z, p = fg.two_proportion_greater(30, 100, 15, 100)
    assert z == pytest.approx(2.5400, abs=1e-3) and p == pytest.approx(0.005543, abs=1e-5)
    assert math.isclose(fg.two_proportion_greater(0, 10, 0, 10)[1], 1.0)


# --- the gate --------------------------------------------------------------------------------


GATE = fg.FieldGate(max_latency_ratio=1.5, max_error_rate_delta=0.02, min_devices=5,
                    alpha=0.01)


def _cohort(p95: list[float], errors: int = 10, inferences: int = 10_000) -> fg.CohortSample:
    return fg.CohortSample(p95_ms=tuple(p95), inferences=inferences, errors=errors,
                           devices=len(p95))


def test_gate_fails_with_a_reason_when_canary_latency_is_clearly_worse() -> None:
    canary = _cohort([18.0 + i * 0.1 for i in range(40)])
    control = _cohort([10.0 + (i % 7) * 0.1 for i in range(160)])
    got = fg.evaluate(GATE, canary, control, stage_number=1, soaked_s=3600)
    assert got.verdict == "fail"
    assert got.reason.startswith("stage 1: canary p95 latency 1.9x control, n=40 vs 160, p<0.01")


def test_gate_passes_when_equal_and_does_not_pause_on_a_noisy_small_difference() -> None:
    same = _cohort([10.0 + (i % 5) for i in range(20)])
    assert fg.evaluate(GATE, same, same, stage_number=2, soaked_s=0).verdict == "pass"
    # 2x slower median but only 5 v 5 devices overlapping widely: not significant at 0.01
    noisy_c = _cohort([5, 30, 8, 40, 20])
    noisy_k = _cohort([12, 6, 25, 9, 7])
    assert fg.evaluate(GATE, noisy_c, noisy_k, stage_number=1, soaked_s=0).verdict == "pass"


def test_gate_waits_for_sample_and_soak() -> None:
    small = _cohort([10.0] * 3)
    big = _cohort([10.0] * 50)
    got = fg.evaluate(GATE, small, big, stage_number=1, soaked_s=10)
    assert got.verdict == "wait" and "canary n=3" in got.reason
    soak = fg.FieldGate(max_latency_ratio=1.5, min_soak_s=600)
    assert fg.evaluate(soak, big, big, stage_number=1, soaked_s=10).verdict == "wait"


def test_gate_error_rate_and_accuracy() -> None:
    p95 = [10.0] * 20
    canary = fg.CohortSample(p95_ms=tuple(p95), inferences=10_000, errors=500, labelled=1000,
                             correct=700, devices=20)
    control = fg.CohortSample(p95_ms=tuple(p95), inferences=40_000, errors=400, labelled=4000,
                              correct=3600, devices=20)
    gate = fg.FieldGate(max_error_rate_delta=0.02, max_accuracy_drop=0.05)
    got = fg.evaluate(gate, canary, control, stage_number=1, soaked_s=0)
    assert got.verdict == "fail"
    assert "error rate 5.0% vs control 1.0%" in got.reason
    assert "field accuracy 70.0% vs control 90.0%" in got.reason


def test_field_gate_spec_is_validated_like_the_other_fields() -> None:
    spec = parse_spec("ro-1", {"model": "det", "version": "1.1.0",
                               "field_gate": {"max_latency_ratio": 1.5, "min_devices": 5}})
    assert spec.field_gate == fg.FieldGate(max_latency_ratio=1.5, min_devices=5)
    assert parse_field_gate(None) is None
    for bad in ({}, {"max_latency_ratio": 0.5}, {"max_latency_ratio": 2, "colour": 1},
                {"max_error_rate_delta": 0.1, "alpha": 0}, {"max_drift_delta": 1,
                                                            "min_devices": 1}, []):
        with pytest.raises(RolloutSpecError):
            parse_field_gate(bad)
