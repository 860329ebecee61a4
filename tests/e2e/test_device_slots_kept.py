"""What the two slots hold after a reject and after a rollback (docs/device-integrator.md §3).

The device keeps the active model and, in the other slot, the previous good version. Writing a
candidate into the other slot sets that version aside (``displaced/``) instead of deleting it:
a candidate refused after its write began (holdout reject, failed trial) is removed and the
previous version put back; a committed candidate makes the set-aside copy go. A refused model is
never left where `rollback` could reach it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

import pytest

from device_updater.slots import ModelSummary, other_slot
from device_updater.state import Downloaded, Phase, Start, UpdateState, Verified, transition
from edgepkg.protocol import full_target_name
from tests.e2e.conftest import MODEL, POLICY, World
from tests.e2e.test_device_e2e import _cycle_until, _install_v1_then_v2


@pytest.fixture
def world(e2e_world: Callable[[], World]) -> World:
    """v1 then v2 installed and committed: v2 active, v1 in the other slot."""
    w = e2e_world()
    _install_v1_then_v2(w)
    return w


def _slots(world: World) -> tuple[str | None, str | None]:
    """(active version, other slot's version or None)."""
    slots = world.agent().slots(MODEL)
    active = slots.active()
    assert active is not None
    other = slots.info(other_slot(active.name))
    return active.version, other.version if other else None


def _installing_v3(world: World) -> UpdateState:
    """The persisted state of v3 about to be written into the inactive slot (holding v1)."""
    agent = world.agent()
    data = world.models["3.0.0"]
    v3 = ModelSummary(name=MODEL, version="3.0.0", sha256=hashlib.sha256(data).hexdigest(),
                      length=len(data), format="onnx")
    st = UpdateState()
    for event in (Start(MODEL, "3.0.0", full_target_name(MODEL, "3.0.0")), Downloaded(v3),
                  Verified(v3, agent.slots(MODEL).inactive_name())):
        st = transition(st, event, 1.0)
    agent.store(MODEL).save(st)
    return st


def test_candidate_refused_before_its_write_keeps_the_previous_version(world: World) -> None:
    assert _slots(world) == ("2.0.0", "1.0.0")
    st = _installing_v3(world)
    agent = world.agent()
    new = agent._reject(MODEL, st, "refused before a byte was written")  # every reject's path
    assert new.phase is Phase.REJECTED
    assert _slots(world) == ("2.0.0", "1.0.0")
    agent.manual_rollback(MODEL)  # and the kept version is usable
    assert _slots(world) == ("1.0.0", "2.0.0")


def test_crash_loop_give_up_before_the_write_keeps_the_previous_version(world: World) -> None:
    st = _installing_v3(world)
    agent = world.agent()
    store = agent.store(MODEL)
    store.save(replace(st, restarts=3))
    store.mark_running()  # the last process died: this start-up is one restart too many
    agent.recover()
    assert store.load().phase is Phase.REJECTED
    assert _slots(world) == ("2.0.0", "1.0.0")


def _set_aside(world: World) -> list[str]:
    slots = world.agent().slots(MODEL)
    return [n for n in ("a", "b") if slots.has_displaced(n)]


def test_holdout_reject_puts_the_previous_version_back_in_the_candidates_slot(
        world: World) -> None:
    world.publish("3.0.0", world.models["3.0.0"], policy=POLICY)
    world.rollout("3.0.0")
    assert _cycle_until(world, "3.0.0", Phase.REJECTED, healthy=None)["phase"] == "rejected"
    # v3 was written where v1 was, then refused: v3 is gone and v1 is back, usable.
    assert _slots(world) == ("2.0.0", "1.0.0")
    assert _set_aside(world) == []
    agent = world.agent()
    agent.manual_rollback(MODEL)
    assert _slots(world) == ("1.0.0", "2.0.0")
    assert b"".join(agent.slots(MODEL).open_plaintext()) == world.models["1.0.0"]


def test_rollback_returns_to_the_previous_good_version_and_keeps_the_one_before(
        world: World) -> None:
    world.publish("4.0.0", world.models["4.0.0"])
    world.rollout("4.0.0")
    assert _cycle_until(world, "4.0.0", Phase.ROLLED_BACK, healthy=False)["phase"] == "rolled_back"
    # Active: v2 (the good version before the candidate); other slot: v1 (the one before v2).
    assert _slots(world) == ("2.0.0", "1.0.0")
    assert _set_aside(world) == []
    # The next good release is installed over v1 and v2 is kept beside it; v1's copy goes.
    world.publish("5.0.0", world.models["5.0.0"])
    world.rollout("5.0.0")
    assert _cycle_until(world, "5.0.0", Phase.COMMITTED)["phase"] == "committed"
    assert _slots(world) == ("5.0.0", "2.0.0")
    assert _set_aside(world) == []


def test_crash_during_the_trial_rolls_back_and_restores_the_previous_version(
        world: World) -> None:
    """Power cut in the trial of v4: start-up rolls back to v2 and puts v1 back in v4's slot."""
    world.publish("4.0.0", world.models["4.0.0"])
    world.rollout("4.0.0")
    assert _cycle_until(world, "4.0.0", Phase.TRIAL, healthy=None)["phase"] == "trial"
    agent = world.agent()
    slots = agent.slots(MODEL)
    active = slots.active_name()
    assert active is not None and slots.has_displaced(active)  # v1 kept aside for a rollback
    agent.store(MODEL).mark_running()  # the last process died (no clean stop recorded)
    agent.recover()
    assert agent.store(MODEL).load().phase is Phase.ROLLED_BACK
    assert _slots(world) == ("2.0.0", "1.0.0")
    assert _set_aside(world) == []
