"""The delta-to-full fallback is a transition of the pure state machine (counted, capped)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from device_updater.errors import IllegalTransitionError
from device_updater.slots import ModelSummary
from device_updater.state import (
    Downloaded,
    FallBackToFull,
    Limits,
    Phase,
    Start,
    UpdateState,
    Verified,
    transition,
)

NOW = 1_800_000_000.0
V2 = ModelSummary(name="cam", version="2.0.0", sha256="2" * 64, length=20, format="onnx")
FULL = "models/cam/2.0.0/cam-2.0.0.edgepkg"
DELTA = "models/cam/2.0.0/delta-from-1.0.0.edgepkg"


def downloading() -> UpdateState:
    return transition(UpdateState(), Start("cam", "2.0.0", FULL, delta_target=DELTA), NOW)


def installing() -> UpdateState:
    st = transition(downloading(), Downloaded(V2), NOW)
    return transition(st, Verified(V2, "b"), NOW)


@pytest.mark.parametrize("make", [downloading, installing], ids=["downloading", "installing"])
def test_fallback_keeps_the_phase_clears_the_delta_and_counts(make: object) -> None:
    assert callable(make)
    st: UpdateState = make()
    new = transition(st, FallBackToFull("patch damaged"), NOW + 1)
    assert new.phase is st.phase and new.delta_target is None and new.target == FULL
    assert new.transitions == st.transitions + 1 and new.updated_at == NOW + 1
    assert "patch damaged" in (new.reason or "")
    assert new.slot == st.slot and new.candidate == st.candidate


def test_fallback_from_verifying() -> None:
    st = transition(downloading(), Downloaded(V2), NOW)
    new = transition(st, FallBackToFull("bad signature on the delta"), NOW)
    assert new.phase is Phase.VERIFYING and new.delta_target is None


def test_fallback_happens_at_most_once_per_target() -> None:
    once = transition(downloading(), FallBackToFull("no delta from the running model"), NOW)
    with pytest.raises(IllegalTransitionError):
        transition(once, FallBackToFull("again"), NOW)


@pytest.mark.parametrize("phase", [Phase.IDLE, Phase.VALIDATING, Phase.SWITCHING, Phase.TRIAL,
                                   Phase.COMMITTED, Phase.REJECTED])
def test_fallback_is_illegal_outside_download_verify_install(phase: Phase) -> None:
    st = replace(installing(), phase=phase)
    with pytest.raises(IllegalTransitionError):
        transition(st, FallBackToFull("x"), NOW)


def test_fallback_past_the_transition_cap_gives_the_target_up() -> None:
    """A crash loop that keeps failing the delta install ends: past max_transitions the
    fallback rejects the target instead of installing again."""
    limits = Limits(max_transitions=5)
    st = replace(installing(), transitions=5)
    new = transition(st, FallBackToFull("delta install crashed"), NOW, limits)
    assert new.phase is Phase.REJECTED and "crash loop" in (new.reason or "")
    assert new.expected_active == "a"  # the running model (other than the candidate slot)
