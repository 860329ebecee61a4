"""Shadow runs: the pure agreement decision, budgets, the spool, and the SHADOW phase of the
state machine (transitions, persistence, recovery after a power cut)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from device_updater.errors import IllegalTransitionError
from device_updater.recovery import recovery_action
from device_updater.shadow.decision import agreeing, budget_breach, decide_shadow
from device_updater.shadow.spool import ShadowSpool
from device_updater.state import (
    Phase,
    Reject,
    ShadowPassed,
    ShadowProgress,
    Switched,
    UpdateState,
    Validated,
    transition,
)
from device_updater.state_store import StateStore
from device_updater.validation.metrics import ScoringError
from edgepkg.policy import Policy, PolicySchemaError, ShadowRule, parse_policy
from tests.device_updater.test_state import NOW, V1, V2, view, walk

RULE = ShadowRule(min_agreement=0.9, min_samples=100, max_wait_s=3600, on_timeout="reject")


# --- policy ------------------------------------------------------------------------------------


def test_shadow_and_trial_tables_parse_and_round_trip() -> None:
    p = parse_policy({"metric": "top1_accuracy",
                      "shadow": {"min_agreement": 0.97, "min_samples": 50, "max_wait_s": 60,
                                 "on_timeout": "promote"},
                      "trial": {"max_latency_ratio": 1.5, "min_reports": 2}})
    assert p.shadow == ShadowRule(0.97, 50, 60.0, "promote", 0.0)
    assert p.trial is not None and p.trial.max_latency_ratio == 1.5 and p.trial.min_reports == 2
    assert parse_policy(p.to_dict()) == p


@pytest.mark.parametrize("bad", [
    {"shadow": {"min_agreement": 1.5}},
    {"shadow": {"on_timeout": "maybe"}},
    {"shadow": {"min_samples": 0}},
    {"shadow": {"unknown": 1}},
    {"metric": "map50", "shadow": {}},
    {"trial": {"max_latency_ratio": 0}},
    {"trial": {"max_error_rate": "high"}},
])
def test_bad_shadow_or_trial_policy_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(PolicySchemaError):
        parse_policy(bad)


# --- agreement (pure) --------------------------------------------------------------------------


def test_classification_agreement_counts_same_class_ids() -> None:
    run = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    cand = np.array([[0.7, 0.3], [0.9, 0.1], [0.51, 0.49]], dtype=np.float32)
    assert agreeing("classification", cand, run) == 2
    ids = np.array([0, 0, 0], dtype=np.int64)  # a final ArgMax: class ids [N]
    assert agreeing("classification", ids, run) == 2


def test_regression_agreement_uses_the_tolerance() -> None:
    run = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    cand = np.array([[1.05], [2.5], [3.0]], dtype=np.float32)
    assert agreeing("regression", cand, run, tolerance=0.1) == 2
    assert agreeing("regression", cand, run, tolerance=0.0) == 1


def test_agreement_refuses_outputs_it_cannot_read() -> None:
    with pytest.raises(ScoringError):
        agreeing("classification", np.zeros((3,), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ScoringError):
        agreeing("regression", np.zeros((3, 2), np.float32), np.zeros((3, 1), np.float32))


def test_decision_promotes_rejects_and_waits() -> None:
    assert decide_shadow(RULE, 50, 50, 10).action == "wait"
    d = decide_shadow(RULE, 120, 110, 10)
    assert d.action == "promote" and "91.7%" in d.reason
    d = decide_shadow(RULE, 120, 60, 10)
    assert d.action == "reject" and "50.0% of 120 live samples" in d.reason and "90.0%" in d.reason


def test_timeout_follows_on_timeout() -> None:
    d = decide_shadow(RULE, 10, 10, 3600)
    assert d.action == "reject" and "only 10 of 100" in d.reason
    assert decide_shadow(replace(RULE, on_timeout="promote"), 10, 10, 3600).action == "promote"


def test_budget_breach_rejects_even_with_full_agreement() -> None:
    policy = Policy(max_latency_ratio=1.5, max_memory_bytes=64 << 20, shadow=RULE)
    slow = budget_breach(policy, cand_latencies_ms=[3.0] * 10, run_latencies_ms=[1.0] * 10,
                         cand_peak_bytes=None, run_peak_bytes=None)
    assert slow is not None and "3.00x" in slow
    # under the 50 µs noise floor a ratio is not a breach
    assert budget_breach(policy, cand_latencies_ms=[0.03] * 10, run_latencies_ms=[0.01] * 10,
                         cand_peak_bytes=None, run_peak_bytes=None) is None
    hog = budget_breach(policy, cand_latencies_ms=[1.0], run_latencies_ms=[1.0],
                        cand_peak_bytes=100 << 20, run_peak_bytes=10 << 20)
    assert hog is not None and "memory" in hog
    d = decide_shadow(RULE, 200, 200, 10, breach=slow)
    assert d.action == "reject" and d.reason.startswith("shadow: median invoke latency")


# --- spool -------------------------------------------------------------------------------------


def test_spool_takes_at_most_k_samples_consumes_and_bounds(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    for i in range(5):
        np.save(spool / f"s{i}.npy", np.full((4, 3), i, np.float32))
    (spool / ".s9.npy.tmp").write_bytes(b"half written")  # the app's temp file: ignored
    np.save(spool / "odd.npy", np.zeros((2, 7), np.float32))
    batch = ShadowSpool(spool, max_files=100).take(10)
    assert batch.inputs is not None and batch.inputs.shape == (10, 3)
    assert (spool / ".s9.npy.tmp").exists()
    left = sorted(p.name for p in spool.glob("*.npy"))
    assert len(left) == 3  # three files consumed (the third only partly: samples are sampled)
    ShadowSpool(spool, max_files=1).take(0)  # bounded: the oldest beyond max_files are deleted
    assert len(list(spool.glob("*.npy"))) == 1


def test_spool_drops_hostile_files(tmp_path: Path) -> None:
    (tmp_path / "a.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "b.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "c.npy", np.ones((1, 3), np.float32))
    batch = ShadowSpool(tmp_path, max_file_bytes=1 << 20).take(10)
    assert batch.inputs is not None and batch.inputs.shape == (1, 3)
    assert batch.discarded == 2 and not list(tmp_path.glob("*.npy"))


# --- the SHADOW phase --------------------------------------------------------------------------


def _shadowing() -> UpdateState:
    return transition(walk(Phase.VALIDATING), Validated("ok", shadow=True), NOW)


def test_validated_with_shadow_enters_shadow_then_switching() -> None:
    s = _shadowing()
    assert s.phase is Phase.SHADOW and s.shadow_started_at == NOW and s.phase.before_switch
    s = transition(s, ShadowProgress(64, 60), NOW + 1)
    s = transition(s, ShadowProgress(64, 64), NOW + 2)
    assert (s.shadow_samples, s.shadow_agreed) == (128, 124)
    assert transition(s, ShadowPassed("agree"), NOW + 3).phase is Phase.SWITCHING
    assert transition(walk(Phase.VALIDATING), Validated(), NOW).phase is Phase.SWITCHING


def test_shadow_progress_is_not_a_transition_so_long_runs_do_not_hit_the_cap() -> None:
    s = _shadowing()
    for i in range(200):
        s = transition(s, ShadowProgress(1, 1), NOW + i)
    assert s.phase is Phase.SHADOW and s.shadow_samples == 200


@pytest.mark.parametrize("event", [ShadowProgress(1, 1), ShadowPassed(), Switched()])
def test_illegal_shadow_events(event: object) -> None:
    with pytest.raises(IllegalTransitionError):
        transition(walk(Phase.VALIDATING), event, NOW)  # type: ignore[arg-type]
    if not isinstance(event, Switched):
        with pytest.raises(IllegalTransitionError):
            transition(walk(Phase.TRIAL), event, NOW)  # type: ignore[arg-type]
    with pytest.raises(IllegalTransitionError):
        transition(_shadowing(), ShadowProgress(1, 2), NOW)


def test_reject_in_shadow_keeps_the_old_slot() -> None:
    s = transition(_shadowing(), Reject("shadow: disagrees", active="a"), NOW)
    assert s.phase is Phase.REJECTED and s.expected_active == "a"


def test_shadow_state_persists(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    s = transition(_shadowing(), ShadowProgress(10, 7), NOW)
    store.save(s)
    assert store.load() == s
    raw = json.loads((tmp_path / "state.json").read_text())
    raw["shadow_agreed"] = 99  # more agreements than samples: corrupt
    (tmp_path / "state.json").write_text(json.dumps(raw))
    assert store.load().phase is Phase.IDLE


def test_power_cut_in_shadow_resumes_shadowing_with_the_tallies() -> None:
    s = transition(_shadowing(), ShadowProgress(40, 40), NOW)
    a = recovery_action(s, view("a", V1, V2), NOW + 100)
    assert a.resume and a.save and a.activate is None and a.discard is None
    assert a.state.phase is Phase.SHADOW and a.state.shadow_samples == 40
    assert a.state.shadow_started_at == NOW  # the max_wait_s clock keeps running
    assert "shadow" in a.reason


def test_power_cut_in_shadow_with_a_damaged_candidate_installs_again() -> None:
    s = _shadowing()
    a = recovery_action(s, view("a", V1, V2, intact=(True, False)), NOW)
    assert a.state.phase is Phase.INSTALLING and a.resume and a.discard == "b"


def test_crash_loop_in_shadow_rejects_and_keeps_the_old_model() -> None:
    s = replace(_shadowing(), restarts=3)
    a = recovery_action(s, view("a", V1, V2), NOW)
    assert a.state.phase is Phase.REJECTED and a.state.expected_active == "a"
