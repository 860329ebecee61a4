"""The pure rollout engine: deterministic stage membership, per-stage conditions, transitions."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given, settings, strategies as st

from edgepkg.protocol import Version
from update_server.rollouts import engine as r, spec as rs

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def spec(**kw: object) -> r.RolloutSpec:
    base: dict[str, object] = {
        "rollout_id": "ro-1",
        "model": "det",
        "version": "1.1.0",
        "selector": r.Selector(frozenset({"site:a"})),
        "stages": (r.Stage(10, 600), r.Stage(50, 600), r.Stage(100, 0)),
        "success_share": 0.9,
        "failure_share": 0.5,
        "min_devices": 3,
        "on_failure": "pause",
    }
    base.update(kw)
    return r.RolloutSpec(**base)  # type: ignore[arg-type]


def ids(n: int, prefix: str = "dev") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


# --- membership ------------------------------------------------------------------------------

device_id_lists = st.lists(st.text(min_size=1, max_size=20), min_size=0, max_size=300, unique=True)
percents = st.floats(min_value=0.01, max_value=100.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(devices=device_id_lists, rollout_id=st.text(min_size=1, max_size=12), percent=percents)
def test_stage_holds_the_percentage_within_one_device(
    devices: list[str], rollout_id: str, percent: float
) -> None:
    cutoff = r.stage_cutoff(devices, rollout_id, percent)
    members = r.stage_members(devices, rollout_id, cutoff)
    assert abs(len(members) - len(devices) * percent / 100) <= 1
    if devices:
        assert members, "a stage above 0 % of a non-empty fleet admits at least one device"


@settings(max_examples=100, deadline=None)
@given(devices=device_id_lists, rollout_id=st.text(min_size=1, max_size=12), percent=percents)
def test_membership_is_deterministic_and_ignores_listing_order(
    devices: list[str], rollout_id: str, percent: float
) -> None:
    c1 = r.stage_cutoff(devices, rollout_id, percent)
    c2 = r.stage_cutoff(list(reversed(devices)), rollout_id, percent)
    assert c1 == c2
    assert r.stage_members(devices, rollout_id, c1) == r.stage_members(
        list(reversed(devices)), rollout_id, c2
    )
    for d in devices[:20]:
        assert r.stage_of(d, rollout_id) == r.stage_of(d, rollout_id)
        assert 0.0 <= r.stage_of(d, rollout_id) < 1.0


@settings(max_examples=80, deadline=None)
@given(devices=device_id_lists, p1=percents, p2=percents)
def test_later_stages_keep_every_device_of_earlier_stages(
    devices: list[str], p1: float, p2: float
) -> None:
    lo, hi = sorted((p1, p2))
    s = spec(
        stages=(r.Stage(lo, 0), r.Stage(hi, 0), r.Stage(100, 0))
        if hi < 100
        else (r.Stage(lo, 0), r.Stage(100, 0))
        if lo < 100
        else (r.Stage(100, 0),)
    )
    state = r.start(s, devices, T0)
    first = set(r.stage_members(devices, s.rollout_id, state.cutoff))
    while state.status == r.RUNNING and state.stage_index + 1 < len(s.stages):
        state = r.advance(s, state, devices, T0)
        now = set(r.stage_members(devices, s.rollout_id, state.cutoff))
        assert first <= now
        first = now


def test_canaries_differ_between_rollouts() -> None:
    devices = ids(1000)
    a = set(r.stage_members(devices, "ro-a", r.stage_cutoff(devices, "ro-a", 5)))
    b = set(r.stage_members(devices, "ro-b", r.stage_cutoff(devices, "ro-b", 5)))
    assert len(a) == len(b) == 50
    assert a != b


def test_devices_enrolled_later_join_the_current_stage_at_its_share() -> None:
    s = spec(stages=(r.Stage(20, 0), r.Stage(100, 0)))
    state = r.start(s, ids(1000), T0)
    late = ids(2000, prefix="late")
    joined = sum(r.in_stage(d, s.rollout_id, state.cutoff) for d in late)
    assert 300 <= joined <= 500  # about 20 % of 2000, by hash
    refreshed = r.refresh_cutoff(s, state, ids(1000) + late)
    assert refreshed.cutoff >= state.cutoff  # nobody admitted before drops out
    members = r.stage_members(ids(1000) + late, s.rollout_id, refreshed.cutoff)
    assert abs(len(members) - 600) <= 1 or refreshed.cutoff == state.cutoff


def test_hundred_percent_admits_devices_never_seen() -> None:
    assert r.stage_cutoff(ids(3), "x", 100) == 1.0
    assert r.in_stage("brand-new", "x", 1.0)


# --- assignment ------------------------------------------------------------------------------


def running_everyone(s: r.RolloutSpec) -> r.RolloutState:
    return r.RolloutState(r.RUNNING, len(s.stages) - 1, T0, T0, (1.0,) * len(s.stages), ())


def view(**kw: object) -> r.DeviceView:
    base: dict[str, object] = {"device_id": "d1", "tags": ("site:a",), "current_version": "1.0.0"}
    base.update(kw)
    return r.DeviceView(**base)  # type: ignore[arg-type]


def test_assigns_a_matching_device_in_stage() -> None:
    s = spec()
    a = r.assignment_for(s, running_everyone(s), view())
    assert a == r.Assignment("det", "1.1.0", "ro-1", False, 0)


@pytest.mark.parametrize(
    "device",
    [
        view(tags=("site:b",)),
        view(current_version="1.1.0"),
        view(current_version="2.0.0"),
        view(enabled=False),
        view(outcome=r.FAILED),
    ],
    ids=["other-site", "already-on-version", "higher-version", "disabled", "already-failed"],
)
def test_never_assigns(device: r.DeviceView) -> None:
    s = spec()
    assert r.assignment_for(s, running_everyone(s), device) is None


@pytest.mark.parametrize("status", [r.PAUSED, r.ABORTED, r.COMPLETED])
def test_only_running_rollouts_assign(status: str) -> None:
    s = spec()
    st_ = running_everyone(s)
    assert r.assignment_for(s, r.RolloutState(status, 2, T0, T0, st_.cutoffs), view()) is None


def test_rollback_moves_only_devices_on_the_bad_version_down() -> None:
    bad = spec(version="1.1.0")
    back = r.rollback_spec(bad, "ro-2", "1.0.0")
    state = r.start(back, ["d1"], T0)
    a = r.assignment_for(back, state, view(current_version="1.1.0"))
    assert a is not None and a.allow_downgrade and a.version == "1.0.0"
    assert r.assignment_for(back, state, view(current_version="0.9.0")) is None


def test_device_outside_stage_is_not_assigned() -> None:
    s = spec()
    state = r.start(s, ids(100), T0)
    assigned = [d for d in ids(100) if r.assignment_for(s, state, view(device_id=d))]
    assert len(assigned) == 10


# --- evaluation ------------------------------------------------------------------------------


def outcomes(stage: int, ok: int, bad: int, pending: int = 0, at: dt.datetime = T0):
    out = [r.DeviceOutcome(f"ok{stage}-{i}", stage, r.SUCCEEDED, at) for i in range(ok)]
    out += [r.DeviceOutcome(f"bad{stage}-{i}", stage, r.FAILED, at) for i in range(bad)]
    out += [r.DeviceOutcome(f"p{stage}-{i}", stage) for i in range(pending)]
    return out


def state_with(sizes: tuple[int, ...], stage: int = 0, **kw: object) -> r.RolloutState:
    base: dict[str, object] = {
        "status": r.RUNNING,
        "stage_index": stage,
        "stage_started_at": T0,
        "failure_window_start": T0,
        "cutoffs": (0.1, 0.5, 1.0)[: stage + 1],
        "stage_sizes": sizes,
    }
    base.update(kw)
    return r.RolloutState(**base)  # type: ignore[arg-type]


def test_failures_below_min_devices_do_not_trip() -> None:
    d = r.evaluate(spec(min_devices=3), state_with((10,)), outcomes(0, 0, 2, 8), T0)
    assert d.action == "none"


def test_failure_share_trips_pause_once_min_devices_finished() -> None:
    d = r.evaluate(spec(min_devices=3), state_with((10,)), outcomes(0, 1, 2, 7), T0)
    assert d.action == "pause"
    assert "2 of 3" in d.reason


def test_failure_can_abort_instead() -> None:
    d = r.evaluate(spec(on_failure="abort"), state_with((4,)), outcomes(0, 0, 4), T0)
    assert d.action == "abort"


@settings(max_examples=200, deadline=None)
@given(
    ok=st.integers(0, 40),
    bad=st.integers(0, 40),
    min_devices=st.integers(1, 50),
    share=st.floats(0.01, 1.0),
)
def test_failure_threshold_respects_min_sample(
    ok: int, bad: int, min_devices: int, share: float
) -> None:
    s = spec(min_devices=min_devices, failure_share=share, success_share=1.0)
    d = r.evaluate(s, state_with((ok + bad + 1,)), outcomes(0, ok, bad, 1), T0)
    finished = ok + bad
    tripped = d.action == "pause"
    if finished < min_devices:
        assert not tripped
    else:
        assert tripped == (bad / finished >= share)


def test_failures_in_an_earlier_group_still_trip_after_advancing() -> None:
    st1 = state_with((3, 10), stage=1)
    d = r.evaluate(spec(), st1, outcomes(0, 0, 3) + outcomes(1, 2, 0, 8), T0)
    assert d.action == "pause" and d.reason.startswith("stage 1")


def test_advance_needs_success_share_and_soak() -> None:
    s = spec()
    st0 = state_with((10,))
    assert r.evaluate(s, st0, outcomes(0, 8, 0, 2), T0 + dt.timedelta(hours=1)).action == "none"
    early = r.evaluate(s, st0, outcomes(0, 9, 0, 1), T0 + dt.timedelta(seconds=599))
    assert early.action == "none" and "soaking" in early.reason
    late = r.evaluate(s, st0, outcomes(0, 9, 0, 1), T0 + dt.timedelta(seconds=600))
    assert late.action == "advance"


def test_devices_not_yet_checked_in_count_against_success() -> None:
    # 10 devices expected in the stage, only 2 reported (both committed): not 100 % yet.
    d = r.evaluate(spec(), state_with((10,)), outcomes(0, 2, 0), T0 + dt.timedelta(days=1))
    assert d.action == "none"


def test_last_stage_success_completes() -> None:
    s = spec()
    st2 = state_with((1, 4, 5), stage=2)
    d = r.evaluate(s, st2, outcomes(0, 1, 0) + outcomes(1, 4, 0) + outcomes(2, 5, 0), T0)
    assert d.action == "complete"
    assert r.apply_decision(s, st2, d, [], T0).status == r.COMPLETED


def test_resume_opens_a_new_failure_window() -> None:
    s = spec(min_devices=2)
    paused = state_with((10,), status=r.PAUSED, reason="stage 1: 2 of 2 failed")
    resumed = r.operator_action(paused, "resume", T0 + dt.timedelta(hours=1))
    assert resumed.status == r.RUNNING and resumed.reason is None
    old = outcomes(0, 0, 2)
    assert r.evaluate(s, resumed, old, T0 + dt.timedelta(hours=1)).action == "none"
    later = T0 + dt.timedelta(hours=2)
    new = [r.DeviceOutcome(f"n{i}", 0, r.FAILED, later) for i in range(2)]
    assert r.evaluate(s, resumed, old + new, later).action == "pause"


def test_paused_rollout_does_not_move() -> None:
    d = r.evaluate(spec(), state_with((1,), status=r.PAUSED), outcomes(0, 1, 0), T0)
    assert d.action == "none"


@pytest.mark.parametrize(
    ("status", "action"),
    [(r.RUNNING, "resume"), (r.PAUSED, "pause"), (r.ABORTED, "resume"), (r.COMPLETED, "abort")],
)
def test_operator_transitions_that_make_no_sense_conflict(status: str, action: str) -> None:
    with pytest.raises(r.RolloutTransitionError):
        r.operator_action(state_with((1,), status=status), action, T0)


# --- spec validation -------------------------------------------------------------------------


def test_parse_spec_defaults_and_groups() -> None:
    s = rs.parse_spec("x", {"model": "det", "version": "1.2.0", "selector": {"groups": ["eu"]}})
    assert s.selector.tags == frozenset({"group:eu"})
    assert [st_.percent for st_ in s.stages] == [5, 25, 100]


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"model": "det"},
        {"model": "det", "version": "one"},
        {"model": "../x", "version": "1.0.0"},
        {"model": "det", "version": "1.0.0", "stages": []},
        {"model": "det", "version": "1.0.0", "stages": [{"percent": 50}, {"percent": 20}]},
        {"model": "det", "version": "1.0.0", "stages": [{"percent": 50}]},
        {"model": "det", "version": "1.0.0", "stages": [{"percent": "100"}]},
        {"model": "det", "version": "1.0.0", "stages": [{"percent": math.inf}]},
        {"model": "det", "version": "1.0.0", "failure_share": 0},
        {"model": "det", "version": "1.0.0", "success_share": 10**400},  # was a 500 (fuzz.api)
        {"model": "det", "version": "1.0.0", "failure_share": -(10**400)},
        {"model": "det", "version": "1.0.0", "min_devices": True},
        {"model": "det", "version": "1.0.0", "on_failure": "explode"},
        {"model": "det", "version": "1.0.0", "selector": {"tags": "a"}},
        {"model": "det", "version": "1.0.0", "selector": {"tags": ["a b"]}},
        {"model": "det", "version": "1.0.0", "surprise": 1},
    ],
)
def test_parse_spec_refuses_bad_input(body: object) -> None:
    with pytest.raises(r.RolloutSpecError):
        rs.parse_spec("x", body)


def test_semver_ordering() -> None:
    assert Version.parse("1.0.0-rc.1") < Version.parse("1.0.0") < Version.parse("1.0.10")
    assert Version.parse("1.0.0-alpha") < Version.parse("1.0.0-alpha.1")
