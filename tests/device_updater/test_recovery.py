"""Start-up recovery (device_updater.recovery): what every persisted phase means after a restart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from device_updater.recovery import displaced_fate, recovery_action, run_recovery
from device_updater.slot_values import ModelSummary, SlotsView
from device_updater.state import (
    Limits,
    Phase,
    Reject,
    RollBack,
    UpdateState,
    transition,
)
from device_updater.state_store import StateStore
from tests.device_updater.test_state import NOW, V1, V2, view, walk

# --- recovery --------------------------------------------------------------------------------


def test_recovery_in_idle_does_nothing() -> None:
    a = recovery_action(UpdateState(), view("a", V1, None), NOW)
    assert not a.save and a.activate is None and a.discard is None and not a.resume


@pytest.mark.parametrize("phase", [Phase.DOWNLOADING, Phase.VERIFYING])
def test_recovery_before_install_resumes_and_keeps_active(phase: Phase) -> None:
    a = recovery_action(walk(phase), view("a", V1, None), NOW)
    assert a.resume and a.activate is None and a.state.phase is phase
    assert a.state.restarts == 1


def test_recovery_during_install_discards_the_partial_slot() -> None:
    a = recovery_action(walk(Phase.INSTALLING), view("a", V1, None, partial=(False, True)), NOW)
    assert a.discard == "b" and a.activate is None and a.resume
    assert a.state.phase is Phase.INSTALLING


def test_recovery_during_validation_revalidates_a_complete_slot() -> None:
    a = recovery_action(walk(Phase.VALIDATING), view("a", V1, V2), NOW)
    assert a.resume and a.discard is None and a.state.phase is Phase.VALIDATING


def test_recovery_during_validation_reinstalls_a_damaged_slot() -> None:
    a = recovery_action(walk(Phase.VALIDATING), view("a", V1, V2, intact=(True, False)), NOW)
    assert a.state.phase is Phase.INSTALLING and a.discard == "b" and a.resume


def test_recovery_in_switching_enters_trial_when_pointer_already_moved() -> None:
    a = recovery_action(walk(Phase.SWITCHING), view("b", V1, V2), NOW + 50)
    assert a.state.phase is Phase.TRIAL and a.state.trial_started_at == NOW + 50
    assert a.activate is None


def test_recovery_in_switching_redoes_the_switch_when_pointer_not_moved() -> None:
    a = recovery_action(walk(Phase.SWITCHING), view("a", V1, V2), NOW)
    assert a.state.phase is Phase.SWITCHING and a.resume and a.activate is None


def test_recovery_in_switching_rejects_a_damaged_candidate() -> None:
    a = recovery_action(walk(Phase.SWITCHING), view("a", V1, V2, intact=(True, False)), NOW)
    assert a.state.phase is Phase.REJECTED and a.state.expected_active == "a"
    assert a.discard == "b"


def test_recovery_in_trial_rolls_back_unless_committed() -> None:
    a = recovery_action(walk(Phase.TRIAL), view("b", V1, V2), NOW)
    assert a.state.phase is Phase.ROLLED_BACK and a.activate == "a" and a.discard == "b"
    committed = recovery_action(walk(Phase.COMMITTED), view("b", V1, V2), NOW)
    assert committed.activate is None and committed.discard is None


def test_recovery_in_trial_without_previous_model_continues_the_trial() -> None:
    a = recovery_action(walk(Phase.TRIAL), view("b", None, V2), NOW)
    assert a.state.phase is Phase.TRIAL and a.resume and a.activate is None


def test_recovery_completes_an_interrupted_rollback() -> None:
    rolled = transition(walk(Phase.TRIAL), RollBack("app failing", active="b"), NOW)
    a = recovery_action(rolled, view("b", V1, V2), NOW)  # died before the pointer flip
    assert a.activate == "a" and a.discard == "b"
    after = recovery_action(rolled, view("a", V1, V2), NOW)  # died before the discard
    assert after.activate is None and after.discard == "b"


def test_recovery_replaces_a_damaged_active_slot_with_the_intact_other() -> None:
    a = recovery_action(UpdateState(), view("a", V1, V2, intact=(False, True)), NOW)
    assert a.activate == "b"


def test_crash_loop_cap_gives_up_the_target() -> None:
    s = walk(Phase.VALIDATING)
    v = view("a", V1, V2)
    for _ in range(3):
        a = recovery_action(s, v, NOW, Limits(max_restarts=3))
        assert a.state.phase is Phase.VALIDATING
        s = a.state
    a = recovery_action(s, v, NOW, Limits(max_restarts=3))
    assert a.state.phase is Phase.REJECTED and "crash loop" in (a.state.reason or "")
    assert a.discard == "b" and a.state.expected_active == "a"


def test_crash_loop_in_trial_rolls_back() -> None:
    s = replace(walk(Phase.TRIAL), restarts=3)
    a = recovery_action(s, view("b", None, V2), NOW, Limits(max_restarts=3))
    assert a.state.phase is Phase.ROLLED_BACK and "crash loop" in (a.state.reason or "")


def test_clean_restart_during_trial_continues_the_trial() -> None:
    a = recovery_action(walk(Phase.TRIAL), view("b", V1, V2), NOW, crashed=False)
    assert a.state.phase is Phase.TRIAL and a.resume and a.activate is None
    assert a.state.restarts == 0


def test_clean_stop_marker_decides_crash_or_clean_restart(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from device_updater.slots import BundleSealer, SlotStore
    from edgepkg.keys._software import FileRecipientKey

    slots = SlotStore(tmp_path / "slots", sealer=BundleSealer(
        FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "test key")))
    import hashlib

    def summary(v: str) -> tuple[ModelSummary, bytes]:
        data = v.encode() * 100
        return ModelSummary(name="cam", version=v, sha256=hashlib.sha256(data).hexdigest(),
                            length=len(data), format="onnx"), data

    s1, d1 = summary("1.0.0")
    s2, d2 = summary("2.0.0")
    slots.switch_to(slots.write(s1, [d1]).name)
    slots.write(s2, [d2])
    slots.switch_to("b")
    store = StateStore(tmp_path / "state.json")
    store.save(replace(walk(Phase.TRIAL), candidate=s2))
    assert not store.was_running()
    assert run_recovery(store, slots, NOW).state.phase is Phase.TRIAL  # first start: clean
    store.mark_stopped()
    assert run_recovery(store, slots, NOW).state.phase is Phase.TRIAL  # clean stop before
    # no mark_stopped: the process "died"
    assert run_recovery(store, slots, NOW).state.phase is Phase.ROLLED_BACK
    assert slots.active_name() == "a" and slots.info("b") is None


def test_reject_keeps_a_previous_version_the_candidate_never_overwrote() -> None:
    # v2 was verified for slot b, which still holds v1 (its writer never started): the
    # outcome's recovery must not empty b; a b holding v2 or a partial write of it is emptied.
    v0 = replace(V1, version="0.9.0", sha256="0" * 64)
    rejected = transition(walk(Phase.INSTALLING), Reject("refused", active="a"), NOW)
    assert recovery_action(rejected, view("a", V1, v0), NOW).discard is None
    assert recovery_action(rejected, view("a", V1, V2), NOW).discard == "b"
    assert recovery_action(rejected, view("a", V1, None, partial=(False, True)),
                           NOW).discard == "b"


# --- the previous version set aside while a candidate is in its slot ---------------------------


def _aside(v: SlotsView, *names: str) -> SlotsView:
    """``v`` with a previous version set aside (``displaced/``) in slots ``names``."""
    return SlotsView(active=v.active, slots={
        n: replace(st, displaced=n in names) for n, st in v.slots.items()})


@pytest.mark.parametrize("phase", [Phase.INSTALLING, Phase.VALIDATING, Phase.SWITCHING])
def test_set_aside_version_is_kept_while_the_candidate_is_in_play(phase: Phase) -> None:
    a = recovery_action(walk(phase), _aside(view("a", V1, V2), "b"), NOW, crashed=False)
    assert a.state.phase is phase and a.restore == () and a.drop == ()


def test_set_aside_version_is_kept_during_a_clean_trial_restart() -> None:
    a = recovery_action(walk(Phase.TRIAL), _aside(view("b", V1, V2), "b"), NOW, crashed=False)
    assert a.state.phase is Phase.TRIAL and a.restore == () and a.drop == ()


def test_interrupted_install_discards_leftovers_and_keeps_the_set_aside_version() -> None:
    a = recovery_action(walk(Phase.INSTALLING),
                        _aside(view("a", V1, None, partial=(False, True)), "b"), NOW)
    assert a.discard == "b" and a.restore == () and a.resume


def test_interrupted_install_keeps_a_previous_version_not_yet_set_aside() -> None:
    # The displacement was undone by settle (or never began): slot b holds v0, complete.
    v0 = replace(V1, version="0.9.0", sha256="0" * 64)
    a = recovery_action(walk(Phase.INSTALLING), view("a", V1, v0), NOW)
    assert a.discard is None and a.resume  # the writer sets it aside when it starts


def test_crash_in_trial_rolls_back_and_restores_the_set_aside_version() -> None:
    a = recovery_action(walk(Phase.TRIAL), _aside(view("b", V1, V2), "b"), NOW)
    assert a.state.phase is Phase.ROLLED_BACK and a.activate == "a"
    assert a.restore == ("b",) and a.discard is None and a.drop == ()


@pytest.mark.parametrize("outcome", [Phase.REJECTED, Phase.ROLLED_BACK])
def test_outcome_restores_the_set_aside_version_in_the_candidates_slot(outcome: Phase) -> None:
    if outcome is Phase.REJECTED:
        st = transition(walk(Phase.VALIDATING), Reject("holdout", active="a"), NOW)
    else:
        st = transition(walk(Phase.TRIAL), RollBack("app failing", active="b"), NOW)
    for b in (V2, None):  # the candidate, or its slot already emptied before the cut
        a = recovery_action(st, _aside(view("a", V1, b), "b"), NOW)
        assert a.restore == ("b",) and a.discard is None and a.activate is None


def test_commit_deletes_the_set_aside_version() -> None:
    a = recovery_action(walk(Phase.COMMITTED), _aside(view("b", V1, V2), "b"), NOW)
    assert a.drop == ("b",) and a.restore == () and a.discard is None


def test_crash_loop_give_up_during_install_restores_the_set_aside_version() -> None:
    s = replace(walk(Phase.INSTALLING), restarts=3)
    a = recovery_action(s, _aside(view("a", V1, None, partial=(False, True)), "b"), NOW,
                        Limits(max_restarts=3))
    assert a.state.phase is Phase.REJECTED and a.restore == ("b",)


def test_no_update_in_progress_restores_a_set_aside_version_and_drops_one_under_the_active(
        ) -> None:
    # IDLE (e.g. a state file reset): whatever is in the inactive slot is no candidate to keep.
    assert recovery_action(UpdateState(), _aside(view("a", V1, V2), "b"), NOW).restore == ("b",)
    assert recovery_action(UpdateState(), _aside(view("a", V1, V2), "a"), NOW).drop == ("a",)


def test_stale_set_aside_copy_beside_another_complete_model_is_dropped() -> None:
    v0 = replace(V1, version="0.9.0", sha256="0" * 64)
    rejected = transition(walk(Phase.INSTALLING), Reject("refused", active="a"), NOW)
    a = recovery_action(rejected, _aside(view("a", V1, v0), "b"), NOW)
    assert a.drop == ("b",) and a.restore == () and a.discard is None


def test_displaced_fate_table() -> None:
    v = view("a", V1, V2)
    assert displaced_fate(v, "b", walk(Phase.VALIDATING), "a") == "keep"
    assert displaced_fate(v, "a", walk(Phase.VALIDATING), "a") == "drop"
    assert displaced_fate(v, "b", walk(Phase.COMMITTED), "b") == "drop"
    rejected = transition(walk(Phase.VALIDATING), Reject("x", active="a"), NOW)
    assert displaced_fate(v, "b", rejected, "a") == "restore"
