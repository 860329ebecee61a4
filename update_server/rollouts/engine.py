"""The rollout engine: pure decisions on plain values plus ``now`` (no database, no Flask).

A rollout brings one model version to the devices a selector matches, in stages
(e.g. 5 % → 25 % → 100 %). Every decision here is a function of its arguments, so every node
of a scaled-out server (and every restart) reaches the same answer:

* **Membership** — :func:`stage_of` hashes ``(rollout id, device id)`` into ``[0, 1)``. A stage
  admits the devices whose hash is below the stage's *cutoff*. :func:`stage_cutoff` picks the
  cutoff from the matching devices so that exactly ``ceil(N * percent / 100)`` of them are in
  (never more than one device away from the percentage, and a small fleet's first stage is never
  empty). The cutoff is stored with the rollout; a device enrolled later is compared against it,
  so it joins the current stage when its hash falls under the cutoff. Cutoffs only grow.
* **Groups** — a device belongs to the stage group in which it was first admitted (hawkBit's
  deployment groups). Conditions are evaluated per group.
* **Success** — the current group's share of committed devices reaches ``success_share`` and the
  stage has soaked ``min_soak_seconds``: advance (or complete after the last stage).
* **Failure** — in any group, once at least ``min_devices`` devices finished (committed or
  failed) inside the current failure window, ``failed / finished >= failure_share`` trips the
  ``on_failure`` action (pause or abort) with a reason (AWS IoT Jobs abort criteria). Resuming
  a paused rollout opens a new failure window, so the failures an operator acknowledged do not
  trip it again at once.

Parsing an operator's rollout request into a :class:`RolloutSpec` lives in :mod:`.spec`.

Selectors: a device matches when it carries every tag of the selector (groups are tags such as
``group:eu-west``); an empty selector matches every device.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edgepkg.protocol import FAILURE_EVENTS, SUCCESS_EVENTS, InvalidVersionError, Version
from update_server.errors import BadRequestError, ConflictError
from update_server.rollouts.field_gate import FieldGate
from update_server.rollouts.membership import (  # re-exported for the service and tests
    in_stage as in_stage,
    stage_cutoff as stage_cutoff,
    stage_members as stage_members,
    stage_of as stage_of,
)

RUNNING = "running"
PAUSED = "paused"
ABORTED = "aborted"
COMPLETED = "completed"
AWAITING_APPROVAL = "awaiting_approval"  # four-eyes rule (update_server.approvals): not started
STATUSES = (RUNNING, PAUSED, ABORTED, COMPLETED, AWAITING_APPROVAL)

PENDING = "pending"
SUCCEEDED = "succeeded"
FAILED = "failed"



Action = Literal["none", "advance", "complete", "pause", "abort"]


class RolloutSpecError(BadRequestError):
    """A rollout definition is malformed (bad stages, thresholds, selector, version)."""

    code = "bad_rollout"


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    percent: float
    min_soak_seconds: int = 0


@dataclass(frozen=True)
class Selector:
    tags: frozenset[str] = frozenset()
    # A dynamic group's name: its selector over tags and facts is looked up when the rollout is
    # evaluated (update_server.groups), so this pure check covers the tags only.
    group: str | None = None

    def matches(self, device_tags: Iterable[str]) -> bool:
        return self.tags.issubset(set(device_tags))

    def key(self) -> str:
        """A canonical string: two selectors conflict when their keys are equal."""
        tags = ",".join(sorted(self.tags))
        return f"{tags};group={self.group}" if self.group else tags

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tags": sorted(self.tags)}
        if self.group:
            out["group"] = self.group
        return out


@dataclass(frozen=True)
class RolloutSpec:
    """What an operator asked for. ``from_version`` is set for rollbacks: only devices that run
    it are moved, and ``allow_downgrade`` lets them go to a lower version."""

    rollout_id: str
    model: str
    version: str
    selector: Selector
    stages: tuple[Stage, ...]
    success_share: float = 0.95
    failure_share: float = 0.2
    min_devices: int = 3
    on_failure: Literal["pause", "abort"] = "pause"
    allow_downgrade: bool = False
    from_version: str | None = None
    field_gate: FieldGate | None = None
    """Canary vs control on field telemetry before a stage may advance (:mod:`.field_gate`)."""


@dataclass(frozen=True)
class RolloutState:
    """Where a rollout stands. ``cutoffs[i]`` is the hash cutoff of stage ``i`` (known for the
    stages reached so far); ``stage_sizes[i]`` the number of devices admitted in group ``i``
    when its cutoff was computed."""

    status: str
    stage_index: int
    stage_started_at: dt.datetime
    failure_window_start: dt.datetime
    cutoffs: tuple[float, ...] = ()
    stage_sizes: tuple[int, ...] = ()
    reason: str | None = None

    @property
    def cutoff(self) -> float:
        return self.cutoffs[self.stage_index] if self.cutoffs else 0.0


@dataclass(frozen=True)
class DeviceOutcome:
    """One admitted device: the group it joined, and how its install ended (if it did)."""

    device_id: str
    stage_index: int
    result: str = PENDING
    finished_at: dt.datetime | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""


@dataclass(frozen=True)
class GroupTally:
    stage_index: int
    expected: int
    admitted: int
    succeeded: int
    failed: int
    failed_in_window: int = 0
    finished_in_window: int = 0

    @property
    def pending(self) -> int:
        return max(self.expected, self.admitted) - self.succeeded - self.failed


@dataclass(frozen=True)
class DeviceView:
    """What the engine needs to know about a device to assign it."""

    device_id: str
    tags: tuple[str, ...] = ()
    current_version: str | None = None
    enabled: bool = True
    outcome: str | None = None  # this rollout's outcome for the device, if admitted before


@dataclass(frozen=True)
class Assignment:
    model: str
    version: str
    rollout_id: str
    allow_downgrade: bool
    stage_index: int


# --- membership ------------------------------------------------------------------------------


def next_cutoff(
    state: RolloutState, spec: RolloutSpec, stage_index: int, device_ids: Sequence[str]
) -> float:
    """The cutoff for ``stage_index``: from the matching devices, never below an earlier one."""
    c = stage_cutoff(device_ids, spec.rollout_id, spec.stages[stage_index].percent)
    earlier = state.cutoffs[: stage_index + 1]
    return max([c, *earlier]) if earlier else c


# --- state transitions -----------------------------------------------------------------------


def start(spec: RolloutSpec, device_ids: Sequence[str], now: dt.datetime) -> RolloutState:
    """The state of a new rollout: running, stage 0, its cutoff from the matching devices."""
    c = stage_cutoff(device_ids, spec.rollout_id, spec.stages[0].percent)
    size = sum(1 for d in set(device_ids) if stage_of(d, spec.rollout_id) < c)
    return RolloutState(RUNNING, 0, now, now, (c,), (size,))


def advance(
    spec: RolloutSpec, state: RolloutState, device_ids: Sequence[str], now: dt.datetime
) -> RolloutState:
    """Move to the next stage (or complete after the last one)."""
    nxt = state.stage_index + 1
    if nxt >= len(spec.stages):
        return dataclasses.replace(state, status=COMPLETED, reason=None)
    c = next_cutoff(state, spec, nxt, device_ids)
    prev = state.cutoffs[state.stage_index]
    size = sum(1 for d in set(device_ids) if prev <= stage_of(d, spec.rollout_id) < c)
    return dataclasses.replace(
        state,
        stage_index=nxt,
        stage_started_at=now,
        cutoffs=(*state.cutoffs, c),
        stage_sizes=(*state.stage_sizes, size),
        reason=None,
    )


def refresh_cutoff(
    spec: RolloutSpec, state: RolloutState, device_ids: Sequence[str]
) -> RolloutState:
    """Recompute the current cutoff after devices enrolled; devices already in stay in."""
    i = state.stage_index
    c = next_cutoff(state, spec, i, device_ids)
    lo = state.cutoffs[i - 1] if i > 0 else 0.0
    size = sum(1 for d in set(device_ids) if lo <= stage_of(d, spec.rollout_id) < c)
    sizes = (
        *state.stage_sizes[:i],
        max(size, state.stage_sizes[i] if i < len(state.stage_sizes) else 0),
    )
    return dataclasses.replace(state, cutoffs=(*state.cutoffs[:i], c), stage_sizes=sizes)


_TRANSITIONS: dict[str, dict[str, str]] = {
    "pause": {RUNNING: PAUSED},
    "resume": {PAUSED: RUNNING},
    "abort": {RUNNING: ABORTED, PAUSED: ABORTED, AWAITING_APPROVAL: ABORTED},
}


def operator_action(
    state: RolloutState, action: str, now: dt.datetime, reason: str | None = None
) -> RolloutState:
    """Apply an operator's pause / resume / abort; raises on a transition that makes no sense."""
    targets = _TRANSITIONS.get(action)
    if targets is None:
        raise RolloutSpecError(f"unknown action {action!r}")
    new = targets.get(state.status)
    if new is None:
        raise RolloutTransitionError(f"cannot {action} a rollout that is {state.status}")
    if action == "resume":
        return dataclasses.replace(state, status=new, reason=None, failure_window_start=now)
    return dataclasses.replace(state, status=new, reason=reason or f"{action}d by an operator")


def approve(
    spec: RolloutSpec, state: RolloutState, device_ids: Sequence[str], now: dt.datetime
) -> RolloutState:
    """Start an approved rollout now: stage 0 over the devices matching at approval time."""
    if state.status != AWAITING_APPROVAL:
        raise RolloutTransitionError(f"cannot approve a rollout that is {state.status}")
    return start(spec, device_ids, now)


class RolloutTransitionError(ConflictError):
    """The rollout is not in a state where the requested action applies (409)."""


# --- evaluation ------------------------------------------------------------------------------


def tally(state: RolloutState, outcomes: Iterable[DeviceOutcome]) -> list[GroupTally]:
    """Per-group counts for the groups reached so far."""
    n = state.stage_index + 1
    admitted = [0] * n
    ok = [0] * n
    bad = [0] * n
    bad_w = [0] * n
    fin_w = [0] * n
    for o in outcomes:
        if not 0 <= o.stage_index < n:
            continue
        i = o.stage_index
        admitted[i] += 1
        if o.result == SUCCEEDED:
            ok[i] += 1
        elif o.result == FAILED:
            bad[i] += 1
        if o.result in (SUCCEEDED, FAILED) and (
            o.finished_at is None or o.finished_at >= state.failure_window_start
        ):
            fin_w[i] += 1
            if o.result == FAILED:
                bad_w[i] += 1
    sizes = list(state.stage_sizes) + [0] * n
    return [
        GroupTally(i, sizes[i], admitted[i], ok[i], bad[i], bad_w[i], fin_w[i]) for i in range(n)
    ]


def evaluate(
    spec: RolloutSpec,
    state: RolloutState,
    outcomes: Iterable[DeviceOutcome],
    now: dt.datetime,
) -> Decision:
    """What the rollout should do now. Only a running rollout moves; failure wins over success."""
    return decide(spec, state, tally(state, outcomes), now)


def decide(
    spec: RolloutSpec, state: RolloutState, groups: Sequence[GroupTally], now: dt.datetime
) -> Decision:
    """:func:`evaluate` on per-group counts (the database can count them in one query)."""
    if state.status != RUNNING:
        return Decision("none", f"rollout is {state.status}")
    by_index = {g.stage_index: g for g in groups}
    groups = [
        by_index.get(i, GroupTally(i, _size(state, i), 0, 0, 0))
        for i in range(state.stage_index + 1)
    ]
    for g in groups:
        if g.finished_in_window >= spec.min_devices and g.finished_in_window > 0:
            share = g.failed_in_window / g.finished_in_window
            if share >= spec.failure_share:
                return Decision(
                    spec.on_failure,
                    f"stage {g.stage_index + 1}: {g.failed_in_window} of {g.finished_in_window} "
                    f"finished devices failed ({share:.0%} >= {spec.failure_share:.0%})",
                )
    cur = groups[state.stage_index]
    stage = spec.stages[state.stage_index]
    denominator = max(cur.expected, cur.admitted)
    share_ok = 1.0 if denominator == 0 else cur.succeeded / denominator
    if share_ok < spec.success_share:
        return Decision(
            "none",
            f"stage {state.stage_index + 1}: {cur.succeeded} of {denominator} committed",
        )
    soaked = (now - state.stage_started_at).total_seconds()
    if soaked < stage.min_soak_seconds:
        return Decision(
            "none",
            f"stage {state.stage_index + 1}: soaking ({int(soaked)}/{stage.min_soak_seconds} s)",
        )
    if state.stage_index + 1 >= len(spec.stages):
        return Decision("complete", f"all {len(spec.stages)} stages succeeded")
    return Decision(
        "advance",
        f"stage {state.stage_index + 1}: {cur.succeeded} of {denominator} committed, soaked",
    )


def apply_decision(
    spec: RolloutSpec,
    state: RolloutState,
    decision: Decision,
    device_ids: Sequence[str],
    now: dt.datetime,
) -> RolloutState:
    if decision.action == "advance" or decision.action == "complete":
        return advance(spec, state, device_ids, now)
    if decision.action == "pause":
        return dataclasses.replace(state, status=PAUSED, reason=decision.reason)
    if decision.action == "abort":
        return dataclasses.replace(state, status=ABORTED, reason=decision.reason)
    return state


def _size(state: RolloutState, i: int) -> int:
    return state.stage_sizes[i] if i < len(state.stage_sizes) else 0


# --- assignment ------------------------------------------------------------------------------


def assignment_for(spec: RolloutSpec, state: RolloutState, device: DeviceView) -> Assignment | None:
    """Should this device install the rollout's version now? ``None`` means stay.

    Never assigns to a disabled device, a device outside the selector or the stage, a device
    that already failed this rollout, a device already on the version, or (unless this is an
    operator rollback) a device running a higher version.
    """
    if state.status != RUNNING or not device.enabled:
        return None
    if device.outcome == FAILED or not spec.selector.matches(device.tags):
        return None
    if device.current_version == spec.version:
        return None
    if spec.from_version is not None and device.current_version != spec.from_version:
        return None
    if not in_stage(device.device_id, spec.rollout_id, state.cutoff):
        return None
    if device.current_version is not None and not spec.allow_downgrade:
        try:
            if Version.parse(device.current_version) > Version.parse(spec.version):
                return None
        except InvalidVersionError:
            return None
    group = stage_group(state, stage_of(device.device_id, spec.rollout_id))
    return Assignment(spec.model, spec.version, spec.rollout_id, spec.allow_downgrade, group)


def stage_group(state: RolloutState, h: float) -> int:
    """The first stage whose cutoff admits hash ``h`` (the device's group)."""
    for i, c in enumerate(state.cutoffs[: state.stage_index + 1]):
        if h < c:
            return i
    return state.stage_index


def outcome_of_event(event_type: str) -> str | None:
    if event_type in SUCCESS_EVENTS:
        return SUCCEEDED
    if event_type in FAILURE_EVENTS:
        return FAILED
    return None


def rollback_spec(spec: RolloutSpec, rollout_id: str, previous_version: str) -> RolloutSpec:
    """A one-stage rollout moving the devices on ``spec.version`` back to ``previous_version``."""
    return RolloutSpec(
        rollout_id=rollout_id,
        model=spec.model,
        version=previous_version,
        selector=spec.selector,
        stages=(Stage(100.0, 0),),
        success_share=spec.success_share,
        failure_share=1.0,
        min_devices=max(spec.min_devices, 1),
        on_failure="pause",
        allow_downgrade=True,
        from_version=spec.version,
    )


__all__ = [
    "ABORTED",
    "COMPLETED",
    "PAUSED",
    "RUNNING",
    "Assignment",
    "Decision",
    "DeviceOutcome",
    "DeviceView",
    "GroupTally",
    "RolloutSpec",
    "RolloutSpecError",
    "RolloutState",
    "RolloutTransitionError",
    "Selector",
    "Stage",
    "advance",
    "apply_decision",
    "assignment_for",
    "decide",
    "evaluate",
    "in_stage",
    "operator_action",
    "outcome_of_event",
    "refresh_cutoff",
    "rollback_spec",
    "stage_cutoff",
    "stage_group",
    "stage_members",
    "stage_of",
    "start",
    "tally",
]
