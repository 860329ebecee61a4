"""The persisted update state machine: legal transitions and persistence (recovery rules:
test_recovery.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from device_updater.errors import IllegalTransitionError
from device_updater.slot_values import ModelSummary, SlotInfo, SlotState, SlotsView
from device_updater.state import (
    Committed,
    Downloaded,
    Installed,
    Limits,
    Phase,
    Reject,
    Reset,
    Retry,
    RollBack,
    Start,
    Switched,
    UpdateState,
    Validated,
    Verified,
    transition,
)
from device_updater.state_store import StateStore

NOW = 1_800_000_000.0
V1 = ModelSummary(name="cam", version="1.0.0", sha256="1" * 64, length=10, format="onnx")
V2 = ModelSummary(name="cam", version="2.0.0", sha256="2" * 64, length=20, format="onnx",
                  policy={"metric": "top1_accuracy", "min": 0.8})


def view(active: str | None, a: ModelSummary | None, b: ModelSummary | None, *,
         intact: tuple[bool, bool] = (True, True), partial: tuple[bool, bool] = (False, False),
         ) -> SlotsView:
    slots = {}
    for i, (n, s) in enumerate((("a", a), ("b", b))):
        info = SlotInfo(name=n, summary=s, sealed_length=1, written_at=0) if s else None  # type: ignore[arg-type]
        slots[n] = SlotState(name=n, info=info, partial=partial[i],  # type: ignore[arg-type]
                             intact=bool(info) and intact[i])
    return SlotsView(active=active, slots=slots)  # type: ignore[arg-type]


def walk(to: Phase) -> UpdateState:
    """Drive a fresh state along the happy path up to ``to`` (installing into slot b)."""
    s = transition(UpdateState(), Start("cam", "2.0.0", "models/cam/2.0.0/cam-2.0.0.edgepkg",
                                        rollout_id="r1"), NOW)
    steps = [
        (Phase.VERIFYING, Downloaded(V2)), (Phase.INSTALLING, Verified(V2, "b")),
        (Phase.VALIDATING, Installed()), (Phase.SWITCHING, Validated()),
        (Phase.TRIAL, Switched()), (Phase.COMMITTED, Committed()),
    ]
    for phase, ev in steps:
        if s.phase is to:
            break
        s = transition(s, ev, NOW + 1)
        assert s.phase is phase
    assert s.phase is to
    return s


def test_happy_path_walks_every_phase_in_order() -> None:
    s = walk(Phase.COMMITTED)
    assert s.expected_active == "b" and s.candidate == V2 and s.transitions == 7
    idle = transition(s, Reset(), NOW + 2)
    assert idle.phase is Phase.IDLE and idle.last_outcome["version"] == "2.0.0"  # type: ignore[index]


@pytest.mark.parametrize("phase,event", [
    (Phase.IDLE, Installed()),
    (Phase.IDLE, Switched()),
    (Phase.DOWNLOADING, Start("cam", "3.0.0", "t")),
    (Phase.VERIFYING, Committed()),
    (Phase.INSTALLING, Switched()),
    (Phase.VALIDATING, Committed()),
    (Phase.TRIAL, Reject("no")),
    (Phase.INSTALLING, RollBack("manual", active="a", manual=True)),
    (Phase.TRIAL, Reset()),
])
def test_illegal_transition_is_refused_with_a_typed_error(phase: Phase, event: object) -> None:
    s = UpdateState() if phase is Phase.IDLE else walk(phase)
    with pytest.raises(IllegalTransitionError):
        transition(s, event, NOW)  # type: ignore[arg-type]


def test_verified_bundle_for_another_version_is_refused() -> None:
    s = walk(Phase.VERIFYING)
    with pytest.raises(IllegalTransitionError, match=r"expected cam 2\.0\.0"):
        transition(s, Verified(replace(V2, version="9.9.9"), "b"), NOW)


def test_retry_past_the_attempt_cap_gives_the_target_up() -> None:
    s = walk(Phase.DOWNLOADING)
    for _ in range(5):
        s = transition(s, Retry("connection reset"), NOW, Limits(max_attempts=5))
        assert s.phase is Phase.DOWNLOADING
    s = transition(s, Retry("connection reset"), NOW, Limits(max_attempts=5))
    assert s.phase is Phase.REJECTED and "gave up after 6 attempts" in (s.reason or "")


def test_transition_cap_stops_a_loop_of_retries() -> None:
    s = walk(Phase.INSTALLING)
    limits = Limits(max_attempts=1000, max_transitions=10)
    for _ in range(20):
        s = transition(s, Retry("again"), NOW, limits)
        if s.phase.terminal:
            break
    assert s.phase is Phase.REJECTED and "crash loop" in (s.reason or "")


def test_trial_failure_rolls_back_to_the_other_slot() -> None:
    s = transition(walk(Phase.TRIAL), RollBack("app failing", active="b"), NOW)
    assert s.phase is Phase.ROLLED_BACK and s.expected_active == "a" and s.slot == "b"


def test_manual_rollback_keeps_both_versions() -> None:
    s = transition(walk(Phase.COMMITTED), RollBack("operator", active="b", manual=True), NOW)
    assert s.phase is Phase.ROLLED_BACK and s.expected_active == "a" and s.slot is None


def test_state_round_trips_through_the_store(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    assert store.load() == UpdateState()
    s = walk(Phase.TRIAL)
    store.save(s)
    assert store.load() == s
    assert json.loads((tmp_path / "state.json").read_text())["schema"] == 1


@pytest.mark.parametrize("content", [
    b"", b"{", b"[]", b'{"schema": 99, "phase": "idle"}',
    b'{"schema": 1, "phase": "exploding"}',
    b'{"schema": 1, "phase": "trial", "slot": "../../etc", "model": "m"}',
    b'{"schema": 1, "phase": "idle", "attempts": -3}',
    b"\xff\xfe garbage",
])
def test_corrupt_state_file_recovers_to_idle_with_a_reason(tmp_path: Path,
                                                           content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    s = StateStore(path).load()
    assert s.phase is Phase.IDLE and "corrupt" in (s.reason or "")
    assert (tmp_path / "state.json.corrupt").read_bytes() == content
