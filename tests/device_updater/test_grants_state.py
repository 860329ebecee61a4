"""Key grants in the device's persisted state and failure table (pure parts)."""

from __future__ import annotations

import pytest

from device_updater.outcomes import Action, classify
from device_updater.state import (
    CorruptStateError,
    GrantsRenewed,
    IllegalTransitionError,
    Phase,
    Start,
    UpdateState,
    transition,
)
from edgepkg.grants import GrantExpiredError, GrantMismatchError

T = "models/m/2.0.0/m-2.0.0.edgepkg"


def test_grants_persist_with_the_assignment_and_survive_a_restart() -> None:
    st = transition(UpdateState(), Start(model="m", version="2.0.0", target=T,
                                         key_grants={T: {"device_id": "x"}}), 1.0)
    assert st.key_grants == {T: {"device_id": "x"}}
    assert UpdateState.from_dict(st.to_dict()) == st
    with pytest.raises(CorruptStateError):
        UpdateState.from_dict({**st.to_dict(), "key_grants": {T: "not an object"}})
    # An old state file (before grants) still loads: no grants.
    old = st.to_dict()
    del old["key_grants"]
    assert UpdateState.from_dict(old).key_grants == {}


def test_fresh_grants_replace_expired_ones_in_the_same_phase() -> None:
    st = transition(UpdateState(), Start(model="m", version="2.0.0", target=T,
                                         key_grants={T: {"v": 1}}), 1.0)
    renewed = transition(st, GrantsRenewed({T: {"v": 2}}), 2.0)
    assert (renewed.phase, renewed.key_grants, renewed.attempts) == (
        st.phase, {T: {"v": 2}}, st.attempts)
    with pytest.raises(IllegalTransitionError):
        transition(UpdateState(), GrantsRenewed({}), 3.0)


def test_expired_grant_waits_and_a_grant_for_another_device_rejects() -> None:
    assert classify(GrantExpiredError("expired"), Phase.INSTALLING,
                    delta=False).action is Action.WAIT
    assert classify(GrantExpiredError("expired"), Phase.INSTALLING,
                    delta=True).action is Action.WAIT
    d = classify(GrantMismatchError("key grant is for device 1"), Phase.INSTALLING, delta=False)
    assert d.action is Action.REJECT and "key grant is for device" in d.reason
