"""The persisted update state machine (DESIGN §4).

    IDLE -> DOWNLOADING -> VERIFYING -> INSTALLING -> VALIDATING -> SWITCHING -> TRIAL -> COMMITTED
    with a [shadow] policy: VALIDATING -> SHADOW (live inputs) -> SWITCHING
    with a maintenance window: VALIDATING/SHADOW -> WAITING (validated; switch only inside the
    window, evaluated offline with the device clock) -> SWITCHING
    exits: REJECTED (before the switch), ROLLED_BACK (after it, or by the operator)

*Persist before acting*: the daemon saves the state that names an action (``StateStore.save``:
temp, fsync, rename, fsync dir) and only then does it. :func:`transition` is pure and refuses
illegal moves. :class:`StateStore` is the file it is persisted in.

Start-up recovery (what every persisted phase means after a restart, and the crash-loop cap)
is :mod:`device_updater.recovery`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from device_updater.errors import (
    CorruptStateError,
    IllegalTransitionError,
    StateError,
    UntrustedDeviceInputError,
)

# The plain slot values only: importing the slot store would load the sealer and cryptography
# into this pure core (tests/device_updater/test_pure_cores.py checks it does not).
from device_updater.slot_values import ModelSummary, other_slot
from device_updater.state_events import (  # re-exported: callers name events via state
    Committed as Committed,
    Downloaded as Downloaded,
    Event as Event,
    FallBackToFull as FallBackToFull,
    GrantsRenewed as GrantsRenewed,
    Installed as Installed,
    Reject as Reject,
    Reset as Reset,
    Retry as Retry,
    RollBack as RollBack,
    ShadowPassed as ShadowPassed,
    ShadowProgress as ShadowProgress,
    Start as Start,
    Switched as Switched,
    TrialProgress as TrialProgress,
    Validated as Validated,
    Verified as Verified,
    WindowOpened as WindowOpened,
)
from edgepkg.errors import ProtocolError
from edgepkg.protocol import parse_maintenance_window, window_open

log = logging.getLogger(__name__)

STATE_SCHEMA = 1
MAX_STATE_BYTES = 256 * 1024


class Phase(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    VALIDATING = "validating"
    SHADOW = "shadow"
    WAITING = "waiting_window"
    SWITCHING = "switching"
    TRIAL = "trial"
    COMMITTED = "committed"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"

    @property
    def terminal(self) -> bool:
        """No update in progress (IDLE or an outcome)."""
        return self in _TERMINAL

    @property
    def before_switch(self) -> bool:
        """An update is in progress and the active slot has not been touched."""
        return self in _PRE_SWITCH


_TERMINAL = frozenset({Phase.IDLE, Phase.COMMITTED, Phase.REJECTED, Phase.ROLLED_BACK})
_PRE_SWITCH = frozenset(
    {Phase.DOWNLOADING, Phase.VERIFYING, Phase.INSTALLING, Phase.VALIDATING, Phase.SHADOW,
     Phase.WAITING}
)
_NEXT = {
    Phase.DOWNLOADING: Phase.VERIFYING,
    Phase.VERIFYING: Phase.INSTALLING,
    Phase.INSTALLING: Phase.VALIDATING,
    Phase.VALIDATING: Phase.SWITCHING,
    Phase.SHADOW: Phase.SWITCHING,
    Phase.SWITCHING: Phase.TRIAL,
    Phase.TRIAL: Phase.COMMITTED,
}


@dataclass(frozen=True)
class Limits:
    """Caps that stop retry storms and crash loops."""

    max_attempts: int = 5  # Retry events for one target (download/verify/install failures)
    max_restarts: int = 3  # start-up recoveries while one target is in progress
    max_transitions: int = 64  # transitions for one target


@dataclass(frozen=True)
class UpdateState:
    """Everything start-up needs to know about the update in progress (or the last outcome).

    Times are UNIX seconds (float) from the caller's clock. ``candidate`` is the signed summary
    of the model being installed; ``slot`` the slot it is written to; ``expected_active`` the
    slot that must be active in an outcome phase (recovery enforces it).
    """

    phase: Phase = Phase.IDLE
    model: str | None = None
    version: str | None = None
    target: str | None = None  # TUF target name of the full bundle
    delta_target: str | None = None  # TUF target name of the delta bundle, if one is used
    rollout_id: str | None = None
    allow_downgrade: bool = False
    # Target name -> key grant JSON object, from the assignment: persisted with it so a restart
    # mid-install still has the data key's way in when the device is not a direct recipient.
    key_grants: dict[str, Any] = field(default_factory=dict)
    # The assignment's maintenance window (wire JSON, edgepkg.protocol._windows), persisted so a
    # power cut while WAITING resumes waiting for the same window.
    maintenance_window: dict[str, Any] | None = None
    candidate: ModelSummary | None = None
    slot: str | None = None
    expected_active: str | None = None
    attempts: int = 0
    restarts: int = 0
    transitions: int = 0
    trial_started_at: float | None = None
    trial_inferences: int = 0
    shadow_started_at: float | None = None
    shadow_samples: int = 0
    shadow_agreed: int = 0
    reason: str | None = None
    updated_at: float = 0.0
    last_outcome: dict[str, Any] | None = None
    schema: int = STATE_SCHEMA

    # --- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["phase"] = self.phase.value
        d["candidate"] = self.candidate.to_dict() if self.candidate else None
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpdateState:
        """Parse a persisted state; raise :class:`CorruptStateError` on anything malformed."""
        try:
            if not isinstance(data, Mapping):
                raise TypeError("not an object")
            if data.get("schema") != STATE_SCHEMA:
                raise ValueError(f"unsupported state schema {data.get('schema')!r}")
            known = {f.name for f in dataclasses.fields(cls)}
            kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in known}
            kwargs["phase"] = Phase(data["phase"])
            if kwargs.get("candidate") is not None:
                kwargs["candidate"] = ModelSummary.from_mapping(kwargs["candidate"])
            state = cls(**kwargs)
            _check_types(state)
            return state
        except (KeyError, TypeError, ValueError, StateError, UntrustedDeviceInputError,
                ProtocolError) as exc:
            raise CorruptStateError(f"state is malformed: {exc}") from None

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1).encode()


def _check_types(s: UpdateState) -> None:
    for name in ("model", "version", "target", "delta_target", "rollout_id", "reason"):
        v = getattr(s, name)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"{name} must be a string")
    for name in ("slot", "expected_active"):
        v = getattr(s, name)
        if v is not None and v not in ("a", "b"):
            raise ValueError(f"{name} must be 'a' or 'b'")
    for name in ("attempts", "restarts", "transitions", "trial_inferences", "shadow_samples",
                 "shadow_agreed"):
        v = getattr(s, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer")
    if not isinstance(s.allow_downgrade, bool):
        raise TypeError("allow_downgrade must be a boolean")
    if not isinstance(s.updated_at, int | float):
        raise TypeError("updated_at must be a number")
    for name in ("trial_started_at", "shadow_started_at"):
        v = getattr(s, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ValueError(f"{name} must be a number")
    if s.shadow_agreed > s.shadow_samples:
        raise ValueError("shadow_agreed cannot exceed shadow_samples")
    if s.last_outcome is not None and not isinstance(s.last_outcome, dict):
        raise ValueError("last_outcome must be an object")
    if not isinstance(s.key_grants, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in s.key_grants.items()):
        raise ValueError("key_grants must be an object of target name -> grant object")
    if s.maintenance_window is not None:
        parse_maintenance_window(s.maintenance_window)
    if not s.phase.terminal and s.phase is not Phase.DOWNLOADING and s.model is None:
        raise ValueError(f"phase {s.phase} needs a model")


# --- events ----------------------------------------------------------------------------------


_FALLBACK_PHASES = frozenset({Phase.DOWNLOADING, Phase.VERIFYING, Phase.INSTALLING})


def _outcome(s: UpdateState) -> dict[str, Any] | None:
    if s.phase is Phase.IDLE or s.model is None:
        return s.last_outcome
    return {"phase": s.phase.value, "model": s.model, "version": s.version,
            "reason": s.reason, "at": s.updated_at}


def _illegal(s: UpdateState, event: Event) -> IllegalTransitionError:
    return IllegalTransitionError(
        f"{type(event).__name__} is not allowed in phase {s.phase.value}"
        + (f" (installing {s.model} {s.version})" if not s.phase.terminal else "")
    )


def _give_up(s: UpdateState, reason: str, now: float) -> UpdateState:
    """The target is abandoned: REJECTED before the switch, ROLLED_BACK after it."""
    if s.phase in (Phase.TRIAL, Phase.SWITCHING) and s.slot is not None:
        # After (or possibly after) the switch: return to the other slot.
        return replace(s, phase=Phase.ROLLED_BACK, reason=reason, updated_at=now,
                       expected_active=other_slot(s.slot), transitions=s.transitions + 1)
    return replace(s, phase=Phase.REJECTED, reason=reason, updated_at=now,
                   expected_active=other_slot(s.slot) if s.slot else s.expected_active,
                   transitions=s.transitions + 1)


def transition(state: UpdateState, event: Event, now: float,
               limits: Limits = Limits()) -> UpdateState:
    """The next state for ``event`` (pure). Raises :class:`IllegalTransitionError`."""
    s = state
    bump: dict[str, Any] = {"transitions": s.transitions + 1, "updated_at": now}
    match event:
        case Start():
            if not s.phase.terminal:
                raise _illegal(s, event)
            new = UpdateState(
                phase=Phase.DOWNLOADING, model=event.model, version=event.version,
                target=event.target, delta_target=event.delta_target,
                rollout_id=event.rollout_id, allow_downgrade=event.allow_downgrade,
                key_grants=dict(event.key_grants), transitions=1, updated_at=now,
                last_outcome=_outcome(s),
                maintenance_window=None if event.maintenance_window is None
                else parse_maintenance_window(event.maintenance_window).to_json(),
            )
            return new
        case Downloaded():
            if s.phase is not Phase.DOWNLOADING:
                raise _illegal(s, event)
            new = replace(s, phase=Phase.VERIFYING, candidate=event.candidate or s.candidate,
                          attempts=0, **bump)
        case Verified():
            if s.phase is not Phase.VERIFYING:
                raise _illegal(s, event)
            other_slot(event.slot)
            if event.candidate.name != s.model or event.candidate.version != s.version:
                raise IllegalTransitionError(
                    f"verified bundle is {event.candidate.name} {event.candidate.version}, "
                    f"expected {s.model} {s.version}")
            new = replace(s, phase=Phase.INSTALLING, candidate=event.candidate, slot=event.slot,
                          attempts=0, **bump)
        case Installed() | Validated() | Switched() | Committed():
            want = {Installed: Phase.INSTALLING, Validated: Phase.VALIDATING,
                    Switched: Phase.SWITCHING, Committed: Phase.TRIAL}[type(event)]
            if s.phase is not want:
                raise _illegal(s, event)
            extra: dict[str, Any] = {}
            if isinstance(event, Switched):
                extra = {"trial_started_at": now, "trial_inferences": 0}
            if isinstance(event, Committed):
                extra = {"expected_active": s.slot, "reason": event.details}
            nxt = _NEXT[s.phase]
            if isinstance(event, Validated) and event.shadow:
                nxt = Phase.SHADOW
                extra = {"shadow_started_at": now, "shadow_samples": 0, "shadow_agreed": 0}
            elif isinstance(event, Validated) and s.maintenance_window is not None:
                nxt = Phase.WAITING
            new = replace(s, phase=nxt, attempts=0, **extra, **bump)
        case ShadowProgress():
            if (s.phase is not Phase.SHADOW or not 0 <= event.agreed <= event.samples):
                raise _illegal(s, event)
            return replace(s, shadow_samples=s.shadow_samples + event.samples,
                           shadow_agreed=s.shadow_agreed + event.agreed, updated_at=now)
        case ShadowPassed():
            if s.phase is not Phase.SHADOW:
                raise _illegal(s, event)
            nxt = Phase.SWITCHING if s.maintenance_window is None else Phase.WAITING
            new = replace(s, phase=nxt, attempts=0, reason=event.details, **bump)
        case WindowOpened():
            if s.phase is not Phase.WAITING or s.maintenance_window is None:
                raise _illegal(s, event)
            if not window_open(parse_maintenance_window(s.maintenance_window), now):
                raise IllegalTransitionError(
                    f"the maintenance window {s.maintenance_window} is closed at {now:.0f}: "
                    f"{s.model} {s.version} waits for it before switching")
            new = replace(s, phase=Phase.SWITCHING, attempts=0, **bump)
        case TrialProgress():
            if s.phase is not Phase.TRIAL or event.inferences < 0:
                raise _illegal(s, event)
            return replace(s, trial_inferences=event.inferences, updated_at=now)
        case Retry():
            if s.phase.terminal:
                raise _illegal(s, event)
            if s.attempts + 1 > limits.max_attempts:
                return _give_up(s, f"gave up after {s.attempts + 1} attempts: {event.reason}",
                                now)
            new = replace(s, attempts=s.attempts + 1, reason=event.reason, **bump)
        case FallBackToFull():
            if s.phase not in _FALLBACK_PHASES or s.delta_target is None:
                raise _illegal(s, event)
            new = replace(s, delta_target=None, reason=f"delta not used: {event.reason}", **bump)
        case Reject():
            if not (s.phase.before_switch or s.phase is Phase.SWITCHING):
                raise _illegal(s, event)
            expected = event.active or (other_slot(s.slot) if s.slot else None)
            return replace(s, phase=Phase.REJECTED, reason=event.reason,
                           expected_active=expected, **bump)
        case RollBack():
            other_slot(event.active)
            if event.manual:
                if s.phase not in (Phase.IDLE, Phase.COMMITTED, Phase.ROLLED_BACK,
                                   Phase.REJECTED):
                    raise _illegal(s, event)
                return replace(s, phase=Phase.ROLLED_BACK, reason=event.reason, slot=None,
                               expected_active=other_slot(event.active),
                               last_outcome=_outcome(s), **bump)
            if s.phase not in (Phase.SWITCHING, Phase.TRIAL):
                raise _illegal(s, event)
            return replace(s, phase=Phase.ROLLED_BACK, reason=event.reason,
                           expected_active=other_slot(event.active)
                           if event.active == s.slot else event.active, **bump)
        case GrantsRenewed():
            if s.phase.terminal:
                raise _illegal(s, event)
            return replace(s, key_grants=dict(event.key_grants), updated_at=now)
        case Reset():
            if not s.phase.terminal:
                raise _illegal(s, event)
            return UpdateState(updated_at=now, last_outcome=_outcome(s))
        case _:
            raise IllegalTransitionError(f"unknown event {event!r}")
    if not new.phase.terminal and new.transitions > limits.max_transitions:
        return _give_up(s, f"crash loop: more than {limits.max_transitions} transitions "
                        f"for {s.model} {s.version}", now)
    return new
