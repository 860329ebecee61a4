"""The maintenance-window wait of the pure state machine: VALIDATING -> WAITING -> SWITCHING,
only inside the window, and a restart while waiting keeps waiting."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from device_updater.errors import IllegalTransitionError
from device_updater.recovery import recovery_action
from device_updater.state import (
    Downloaded,
    Installed,
    Phase,
    Reject,
    ShadowPassed,
    Start,
    UpdateState,
    Validated,
    Verified,
    WindowOpened,
    transition,
)
from device_updater.state_store import StateStore
from tests.device_updater.test_state import V1, V2, view

WINDOW = {"cron": "0 2 * * *", "duration": "2h", "tz": "UTC"}
NOON = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC).timestamp()
TWO_THIRTY = dt.datetime(2026, 6, 2, 2, 30, tzinfo=dt.UTC).timestamp()


def validated(window: dict[str, str] | None = WINDOW, *, shadow: bool = False) -> UpdateState:
    s = transition(UpdateState(), Start("cam", "2.0.0", "t", maintenance_window=window), NOON)
    for ev in (Downloaded(V2), Verified(V2, "b"), Installed(), Validated(shadow=shadow)):
        s = transition(s, ev, NOON)
    return s


def test_validated_candidate_waits_for_the_window_then_switches_inside_it() -> None:
    s = validated()
    assert s.phase is Phase.WAITING and s.phase.before_switch
    with pytest.raises(IllegalTransitionError, match="closed"):
        transition(s, WindowOpened(), NOON)
    assert transition(s, WindowOpened(), TWO_THIRTY).phase is Phase.SWITCHING


def test_without_a_window_the_machine_switches_as_before() -> None:
    s = validated(None)
    assert s.phase is Phase.SWITCHING
    with pytest.raises(IllegalTransitionError):
        transition(s, WindowOpened(), TWO_THIRTY)


def test_shadow_run_then_waits_for_the_window() -> None:
    s = validated(shadow=True)
    assert s.phase is Phase.SHADOW
    assert transition(s, ShadowPassed(), NOON).phase is Phase.WAITING


def test_a_waiting_update_can_still_be_rejected_keeping_the_old_slot() -> None:
    s = transition(validated(), Reject("aborted", active="a"), NOON)
    assert s.phase is Phase.REJECTED and s.expected_active == "a"


def test_malformed_window_in_start_is_refused() -> None:
    with pytest.raises(Exception, match="cron"):
        transition(UpdateState(), Start("cam", "2.0.0", "t",
                                        maintenance_window={"cron": "bad", "duration": "1h"}),
                   NOON)


def test_power_cut_while_waiting_resumes_waiting(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(validated())
    st = store.load()
    assert st.phase is Phase.WAITING and st.maintenance_window == WINDOW
    action = recovery_action(st, view("a", V1, V2), NOON, crashed=True)
    assert action.state.phase is Phase.WAITING and action.resume
    assert action.activate is None and action.discard is None


def test_tampered_window_in_the_state_file_is_treated_as_corrupt(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    s = validated()
    d = s.to_dict()
    d["maintenance_window"] = {"cron": "* * * * * *", "duration": "1h", "tz": "UTC"}
    store.path.write_text(__import__("json").dumps(d))
    assert store.load().phase is Phase.IDLE
