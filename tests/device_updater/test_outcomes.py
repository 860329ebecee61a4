"""The one table that maps a failure during an update to a state-machine event (pure)."""

from __future__ import annotations

import pytest

from device_updater.errors import (
    DeltaUnusableError,
    SlotError,
    SlotIntegrityError,
    TransportError,
    UpdateRefusedError,
)
from device_updater.outcomes import Action, classify
from device_updater.state import FallBackToFull, Phase, Reject, Retry
from device_updater.tuf_client import (
    MetadataExpiredError,
    TufTransportError,
    TufVerificationError,
)
from edgepkg.errors import BundleError, DeltaError, NotARecipientError, TooLargeError

PRE = [Phase.DOWNLOADING, Phase.VERIFYING, Phase.INSTALLING]


@pytest.mark.parametrize("exc", [TransportError("down"), TufTransportError("timeout")])
@pytest.mark.parametrize("phase", [*PRE, Phase.VALIDATING, Phase.TRIAL])
@pytest.mark.parametrize("delta", [False, True])
def test_network_problems_wait_and_touch_nothing(exc: Exception, phase: Phase,
                                                 delta: bool) -> None:
    d = classify(exc, phase, delta=delta)
    assert d.action is Action.WAIT and d.event() is None and not d.report


@pytest.mark.parametrize("exc", [DeltaUnusableError("wrong base"), BundleError("tampered"),
                                 DeltaError("bad patch"), TooLargeError("huge"),
                                 SlotError("busy"), TufVerificationError("hash mismatch")])
@pytest.mark.parametrize("phase", PRE)
def test_delta_path_failures_fall_back_to_full(exc: Exception, phase: Phase) -> None:
    d = classify(exc, phase, delta=True)
    assert d.action is Action.FALL_BACK
    assert isinstance(d.event(), FallBackToFull) and str(exc) in d.reason
    # a delta that failed to download is not reported as a bad delta; later failures are
    assert d.report is (phase is not Phase.DOWNLOADING)


def test_wrong_recipient_rejects_even_on_the_delta_path() -> None:
    for delta in (False, True):
        d = classify(NotARecipientError("not for us"), Phase.VERIFYING, delta=delta)
        assert d.action is Action.REJECT and isinstance(d.event(), Reject)
        assert "not encrypted for this device" in d.reason and "not for us" in d.reason


def test_full_bundle_verification_failure_retries_capped_by_the_machine() -> None:
    d = classify(TufVerificationError("hash mismatch"), Phase.DOWNLOADING, delta=False)
    assert d.action is Action.RETRY and isinstance(d.event(), Retry) and d.report


def test_expired_metadata_rejects_before_the_switch_and_waits_after() -> None:
    exc = MetadataExpiredError("timestamp expired")
    assert classify(exc, Phase.VERIFYING, delta=False).action is Action.REJECT
    assert classify(exc, Phase.DOWNLOADING, delta=True).action is Action.REJECT
    assert classify(exc, Phase.TRIAL, delta=False).action is Action.WAIT


@pytest.mark.parametrize("exc", [UpdateRefusedError("downgrade refused"),
                                 SlotIntegrityError("hash differs"), BundleError("bad sig")])
def test_refused_or_hostile_input_rejects_before_the_switch(exc: Exception) -> None:
    d = classify(exc, Phase.INSTALLING, delta=False)
    assert d.action is Action.REJECT and d.report and str(exc) in d.reason


def test_refusal_on_the_delta_path_rejects_too() -> None:
    d = classify(UpdateRefusedError("requirements not met"), Phase.VERIFYING, delta=True)
    assert d.action is Action.REJECT


def test_after_the_switch_and_unknown_errors_are_not_the_drivers() -> None:
    assert classify(BundleError("x"), Phase.TRIAL, delta=False).action is Action.RAISE
    assert classify(SlotError("x"), Phase.INSTALLING, delta=False).action is Action.RAISE
    assert classify(ValueError("bug"), Phase.DOWNLOADING, delta=True).action is Action.RAISE
    assert classify(ValueError("bug"), Phase.DOWNLOADING, delta=True).event() is None
