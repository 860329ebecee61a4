"""What a failure during an update means for the state machine: ONE table (pure).

The agent's steps raise; the driver (:meth:`Agent._advance`) asks :func:`classify` what the
exception means in the current phase and applies the answer as a state-machine event
(:class:`~device_updater.state.Retry`, :class:`~device_updater.state.Reject`,
:class:`~device_updater.state.FallBackToFull`) or waits for the next cycle. Nothing else maps
exceptions to outcomes, so a new failure mode is one row here plus a test.

The first matching row wins; a row may leave a context (``delta`` / before / after the switch)
unset (``None``) to let a later row decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from device_updater.errors import (
    DeltaUnusableError,
    MetadataExpiredError,
    SealedToOtherStateError,
    SlotError,
    TransportError,
    TufVerificationError,
    UntrustedDeviceInputError,
)
from device_updater.state import Event, FallBackToFull, Phase, Reject, Retry
from edgepkg.errors import (
    BundleError,
    DeltaError,
    GrantExpiredError,
    NotARecipientError,
    TooLargeError,
    UntrustedInputError,
)


class Action(StrEnum):
    WAIT = "wait"  # transient (network, expired metadata after the switch): keep the state
    RETRY = "retry"  # Retry event: try again next cycle, capped by Limits.max_attempts
    REJECT = "reject"  # Reject event: give the target up, the running model stays
    FALL_BACK = "fall_back"  # FallBackToFull event: install the full bundle instead
    RAISE = "raise"  # not an update failure the driver can judge: let the caller see it


@dataclass(frozen=True)
class Rule:
    errors: tuple[type[BaseException], ...]
    delta: Action | None  # the failure happened on the delta path (delta_target still set)
    before_switch: Action | None  # DOWNLOADING..VALIDATING, full bundle
    after_switch: Action | None  # SWITCHING, TRIAL
    why: str  # prefix of the reason recorded in the state and reported
    report: bool = True  # queue a ``verification_failed`` event


RULES: tuple[Rule, ...] = (
    # The key grant expired before the install used it: keep the state; the next check-in
    # brings a fresh grant (GrantsRenewed), and the install resumes where it stopped.
    Rule((GrantExpiredError,), Action.WAIT, Action.WAIT, Action.RAISE,
         "key grant expired", report=False),


    # The slot key is sealed to TPM PCR values that no longer hold (another boot chain, or the
    # disk moved): nothing is wrong with the update or the slots, so keep the state and wait for
    # 'edge-updater reseal'; the check-in carries the reason (last_error).
    Rule((SealedToOtherStateError,), Action.WAIT, Action.WAIT, Action.WAIT,
         "models sealed to another device state", report=False),
    # Wrong device: the full bundle would not be for us either.
    Rule((NotARecipientError,), Action.REJECT, Action.REJECT, Action.RAISE,
         "bundle is not encrypted for this device"),
    # Network down, timeout, 5xx: the running model is untouched, the next cycle resumes.
    Rule((TransportError,), Action.WAIT, Action.WAIT, Action.WAIT, "network problem",
         report=False),
    # Signed metadata expired (freeze attack or a stale repository): no new install.
    Rule((MetadataExpiredError,), Action.REJECT, Action.REJECT, Action.WAIT,
         "signed metadata expired", report=False),
    # Tampered/truncated download or bad metadata: the full bundle may still be fine; for a
    # full bundle try again later (capped).
    Rule((TufVerificationError,), Action.FALL_BACK, Action.RETRY, Action.RAISE,
         "download failed verification"),
    # The delta cannot rebuild the candidate here (wrong base, damaged patch, slot problem).
    Rule((DeltaUnusableError, BundleError, DeltaError, TooLargeError, SlotError),
         Action.FALL_BACK, None, None, "delta unusable"),
    # Hostile or wrong input (refused downgrade, unmet requirements, bad bundle): give up.
    Rule((UntrustedDeviceInputError, UntrustedInputError), Action.REJECT, Action.REJECT,
         Action.RAISE, "update refused"),
)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    report: bool

    def event(self) -> Event | None:
        """The state-machine event to apply, or None (wait / raise)."""
        if self.action is Action.RETRY:
            return Retry(self.reason)
        if self.action is Action.REJECT:
            return Reject(self.reason)
        if self.action is Action.FALL_BACK:
            return FallBackToFull(self.reason)
        return None


def classify(exc: BaseException, phase: Phase, *, delta: bool) -> Decision:
    """What ``exc``, raised while working in ``phase``, means (pure).

    ``delta``: the failure happened while a delta was in use (the state still names one);
    fallback is only possible then. Unknown exceptions RAISE.
    """
    fallback_possible = delta and phase in (Phase.DOWNLOADING, Phase.VERIFYING,
                                            Phase.INSTALLING)
    for rule in RULES:
        if not isinstance(exc, rule.errors):
            continue
        if fallback_possible:
            action = rule.delta
        elif phase.before_switch:
            action = rule.before_switch
        else:
            action = rule.after_switch
        if action is None:
            continue
        # A delta that failed to download is a transport matter the full bundle fixes; failures
        # of a downloaded delta are reported so the fleet sees bad deltas.
        report = rule.report and not (action is Action.FALL_BACK
                                      and phase is Phase.DOWNLOADING)
        return Decision(action, f"{rule.why}: {exc}", report)
    return Decision(Action.RAISE, str(exc), False)
