"""The events of the update state machine (:func:`device_updater.state.transition`): plain
values, one per thing that can happen to an update, kept apart from the machine itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from device_updater.slot_values import ModelSummary


@dataclass(frozen=True)
class Start:
    """Begin installing an assignment: IDLE/COMMITTED/REJECTED/ROLLED_BACK -> DOWNLOADING."""

    model: str
    version: str
    target: str
    delta_target: str | None = None
    rollout_id: str | None = None
    allow_downgrade: bool = False
    key_grants: Mapping[str, Any] = field(default_factory=dict)
    maintenance_window: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class GrantsRenewed:
    """The server sent fresh key grants for the update in progress (an earlier grant expired
    before it was used): the same phase with the new grants; not counted as an attempt."""

    key_grants: Mapping[str, Any]


@dataclass(frozen=True)
class Downloaded:
    """DOWNLOADING -> VERIFYING; ``candidate`` from the TUF target's signed ``custom`` if known."""

    candidate: ModelSummary | None = None


@dataclass(frozen=True)
class Verified:
    """VERIFYING -> INSTALLING into ``slot`` (the inactive one); ``candidate`` from the verified
    bundle manifest (``ModelSummary.from_mapping(manifest.summary())``), with its policy."""

    candidate: ModelSummary
    slot: str


@dataclass(frozen=True)
class Installed:
    """INSTALLING -> VALIDATING (the slot writer committed)."""


@dataclass(frozen=True)
class Validated:
    """VALIDATING -> SWITCHING (the holdout policy accepted the candidate); -> SHADOW instead
    when ``shadow`` (the signed policy asks for a shadow run on live inputs first)."""

    details: str | None = None
    shadow: bool = False


@dataclass(frozen=True)
class ShadowProgress:
    """SHADOW -> SHADOW: add one batch's live samples and how many of them the models agreed on.
    Not counted as a transition (a long shadow run has many batches)."""

    samples: int
    agreed: int


@dataclass(frozen=True)
class ShadowPassed:
    """SHADOW -> SWITCHING: agreement and budgets held on live inputs (or on_timeout promotes)."""

    details: str | None = None


@dataclass(frozen=True)
class WindowOpened:
    """WAITING -> SWITCHING: legal only while the persisted maintenance window is open at
    ``now`` (the pure machine checks it, so no caller can switch outside the window)."""


@dataclass(frozen=True)
class Switched:
    """SWITCHING -> TRIAL (the pointer names the new slot); the trial starts at ``now``."""


@dataclass(frozen=True)
class TrialProgress:
    """TRIAL -> TRIAL: record the inferences counted so far."""

    inferences: int


@dataclass(frozen=True)
class Committed:
    """TRIAL -> COMMITTED."""

    details: str | None = None


@dataclass(frozen=True)
class Retry:
    """Stay in the current in-progress phase after a transient failure; counts an attempt.

    Past ``Limits.max_attempts`` the target is given up instead (REJECTED / ROLLED_BACK).
    """

    reason: str


@dataclass(frozen=True)
class Reject:
    """Give up the target before the switch: DOWNLOADING..SWITCHING -> REJECTED.

    The old slot stays active (``expected_active``); the daemon then discards the candidate in
    ``slot`` and puts back the previous good version it had set aside there.
    ``active`` names the slot that is active now (needed when the state does not know it).
    """

    reason: str
    active: str | None = None


@dataclass(frozen=True)
class RollBack:
    """Point back at the previous slot: SWITCHING/TRIAL -> ROLLED_BACK (automatic), or from
    IDLE/COMMITTED/ROLLED_BACK when ``manual`` (operator ``edge-updater rollback``).

    ``active`` is the slot active now; the state records ``expected_active = other(active)``.
    For an automatic rollback the abandoned slot is the candidate and gets discarded; for a
    manual one nothing is discarded (both versions are kept).
    """

    reason: str
    active: str
    manual: bool = False


@dataclass(frozen=True)
class FallBackToFull:
    """Give up the delta and install the full bundle instead: DOWNLOADING/VERIFYING/INSTALLING
    -> the same phase with ``delta_target`` cleared (the full target is fetched and verified by
    the step that runs next). Legal only while a delta is in use, so it happens at most once
    per target; it counts as a transition (the crash-loop cap applies) and records the reason.
    """

    reason: str


@dataclass(frozen=True)
class Reset:
    """Outcome -> IDLE, remembering the outcome in ``last_outcome``."""


Event = (
    Start | Downloaded | Verified | Installed | Validated | Switched | TrialProgress | Committed
    | Retry | Reject | RollBack | FallBackToFull | Reset | GrantsRenewed | ShadowProgress
    | ShadowPassed | WindowOpened
)
