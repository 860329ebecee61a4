"""End to end: the real update server, a real TUF repository, real signed+encrypted bundles of
real ONNX models, and the device agent with its key in a SoftHSM2 token (the shared
:func:`~tests.e2e.conftest.e2e_world` factory).

Every test builds its own world, so they run alone and in any order. Scenarios (one device,
one model ``clf``): v1 installed and committed; v2 arrives as a delta and is committed; v3
(regressed) is rejected by holdout validation and the reason reaches the server; v4 fails its
trial and is rolled back; operator rollback; downgrade refused; a bundle for another device
refused; swapped root refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from device_updater.enrollment import enroll_device
from device_updater.errors import EnrollmentError
from device_updater.state import Phase
from device_updater.status import status
from device_updater.tuf_client import TrustAnchorMismatchError
from edgepkg import keys as ekeys, repo as erepo
from edgepkg.protocol import Assignment, full_target_name
from tests.e2e.conftest import MODEL, POLICY, World
from tests.edgepkg._repo_support import write_key, write_public


@pytest.fixture
def world(e2e_world: Callable[[], World]) -> World:
    """A fresh device that installed v1 (full) and then v2 (delta), both committed."""
    w = e2e_world()
    _install_v1_then_v2(w)
    return w


def _install_v1_then_v2(world: World) -> None:
    world.publish("1.0.0", world.models["1.0.0"])
    world.rollout("1.0.0")
    assert _cycle_until(world, "1.0.0", Phase.COMMITTED)["phase"] == "committed"
    world.publish("2.0.0", world.models["2.0.0"])
    world.rollout("2.0.0")
    assert _cycle_until(world, "2.0.0", Phase.COMMITTED)["phase"] == "committed"


def _cycle_until(world: World, version: str, phase: Phase, *, healthy: bool | None = True,
                 cycles: int = 4) -> dict[str, Any]:
    agent = world.agent()
    agent.recover()
    for _ in range(cycles):
        report = agent.run_cycle()
        assert report.online, report
        st = agent.store(MODEL).load()
        if st.phase is Phase.TRIAL and healthy is not None:
            world.healthy(version, ok=healthy)
        if st.phase is phase and st.version == version:
            break
    agent.run_cycle()  # flush events
    return status(world.config)["models"][MODEL]


def _active_plaintext(world: World) -> bytes:
    agent = world.agent()
    return b"".join(agent.slots(MODEL).open_plaintext(None))


def test_enrolled_device_has_token_anchors_and_refuses_second_enrollment(
        e2e_world: Callable[[], World]) -> None:
    world = e2e_world()
    anchors = world.keystore.trust_anchors()
    assert len(anchors.release_keys) == 1
    with pytest.raises(EnrollmentError, match="already enrolled"):
        enroll_device(world.config, world.keystore, enrollment_token="bogus",
                      trusted_root=(world.repo / "metadata" / "1.root.json").read_bytes(),
                      release_keys=anchors.release_keys)


def test_v1_full_install_then_v2_via_delta(e2e_world: Callable[[], World]) -> None:
    world = e2e_world()
    world.publish("1.0.0", world.models["1.0.0"])
    world.rollout("1.0.0")
    m = _cycle_until(world, "1.0.0", Phase.COMMITTED)
    assert m["phase"] == "committed", m
    assert _active_plaintext(world) == world.models["1.0.0"]

    world.publish("2.0.0", world.models["2.0.0"])
    assert any(r.kind == "delta" for r in erepo.list_releases(world.repo))
    world.rollout("2.0.0")
    m = _cycle_until(world, "2.0.0", Phase.COMMITTED)
    assert m["phase"] == "committed", m
    assert _active_plaintext(world) == world.models["2.0.0"]
    installed = {e["version"]: e for e in world.device_events() if e["type"] == "installed"}
    assert installed["1.0.0"]["details"]["method"] == "full"
    assert installed["2.0.0"]["details"]["method"] == "delta"
    # both versions kept
    slots = status(world.config)["models"][MODEL]["slots"]
    assert {s["version"] for s in slots.values() if s} == {"1.0.0", "2.0.0"}


def test_operator_rollback_then_downgrade_assignment_refused(world: World) -> None:
    agent = world.agent()
    info = agent.manual_rollback(MODEL)
    assert info.version == "1.0.0"
    assert _active_plaintext(world) == world.models["1.0.0"]
    agent.manual_rollback(MODEL)  # and forward again
    assert _active_plaintext(world) == world.models["2.0.0"]
    # a (compromised) server assigns 1.0.0 without allow_downgrade: refused
    agent.apply_assignment(Assignment(MODEL, "1.0.0", full_target_name(MODEL, "1.0.0")))
    st = agent.store(MODEL).load()
    assert st.phase is Phase.REJECTED and "downgrade" in (st.reason or "")
    assert _active_plaintext(world) == world.models["2.0.0"]


def test_v3_rejected_by_holdout_validation_with_reason_on_server(world: World) -> None:
    world.publish("3.0.0", world.models["3.0.0"], policy=POLICY)
    world.rollout("3.0.0")
    m = _cycle_until(world, "3.0.0", Phase.REJECTED, healthy=None)
    assert m["phase"] == "rejected" and "holdout validation failed" in m["reason"], m
    assert "max_regression: top1_accuracy worsened" in m["reason"]  # the rule that decided
    assert _active_plaintext(world) == world.models["2.0.0"]
    ev = [e for e in world.device_events() if e["type"] == "rejected" and e["version"] == "3.0.0"]
    assert ev and "holdout validation failed" in ev[-1]["details"]["reason"]


def test_v4_trial_failure_rolls_back_automatically(world: World) -> None:
    world.publish("4.0.0", world.models["4.0.0"])
    world.rollout("4.0.0")
    m = _cycle_until(world, "4.0.0", Phase.ROLLED_BACK, healthy=False)
    assert m["phase"] == "rolled_back", m
    assert "failure" in m["reason"]
    assert _active_plaintext(world) == world.models["2.0.0"]
    assert any(e["type"] == "rolled_back" and e["version"] == "4.0.0"
               for e in world.device_events())


def test_bundle_for_another_device_is_refused(world: World) -> None:
    other = ekeys.load_public_key(write_public(write_key(world.tmp / "other.pem", "p256"),
                                               world.tmp / "other.pub"))
    world.publish("5.0.0", world.models["5.0.0"],
                  recipients=[other, ekeys.load_public_key(world.archive_ref)])
    world.rollout("5.0.0")
    m = _cycle_until(world, "5.0.0", Phase.REJECTED, healthy=None)
    assert m["phase"] == "rejected" and "not encrypted for this device" in m["reason"], m
    assert _active_plaintext(world) == world.models["2.0.0"]


def test_swapped_root_on_disk_blocks_updates_but_model_keeps_serving(world: World) -> None:
    root = world.config.state_dir / "tuf" / "trusted-root.json"
    genuine = root.read_bytes()
    doc = json.loads(genuine)
    doc["signed"]["version"] = 1
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"
    root.write_text(json.dumps(doc))
    try:
        with pytest.raises(TrustAnchorMismatchError):
            world.agent().tuf()
        assert _active_plaintext(world) == world.models["2.0.0"]
    finally:
        root.write_bytes(genuine)


def test_poll_with_nothing_new_is_one_small_request(world: World) -> None:
    for ro in world.api("GET", "/api/v1/rollouts").json()["rollouts"]:
        if ro["status"] in ("running", "paused"):
            world.api("POST", f"/api/v1/rollouts/{ro['id']}/abort")
    agent = world.agent()
    agent.run_cycle()  # flushes whatever is queued
    before = agent.client.requests_made
    body = len(json.dumps(agent.checkin_report()))
    report = agent.run_cycle()
    assert report.online and report.assignments == 0
    assert agent.client.requests_made - before == 1  # check-in only: no TUF traffic
    assert agent.tuf_requests_made == 0
    assert body < 4096


def test_server_allowed_downgrade_needs_a_signed_reason(world: World) -> None:
    """allow_downgrade comes from the (unsigned) server reply: alone it is not enough. The
    older version must still be kept in the other slot, or the running release must have been
    withdrawn from the signed TUF targets."""
    # A committed v5 replaces v1 in the inactive slot (v2 is kept beside it), so 1.0.0 is no
    # longer kept on the device. (A rejected candidate would not do: its slot gets v1 back.)
    world.publish("5.0.0", world.models["5.0.0"])
    world.rollout("5.0.0")
    assert _cycle_until(world, "5.0.0", Phase.COMMITTED)["phase"] == "committed"
    agent = world.agent()
    slots = {s["version"] for s in status(world.config)["models"][MODEL]["slots"].values() if s}
    assert slots == {"5.0.0", "2.0.0"}
    agent.apply_assignment(Assignment(MODEL, "1.0.0", full_target_name(MODEL, "1.0.0"),
                                      allow_downgrade=True))
    st = agent.store(MODEL).load()
    assert st.phase is Phase.REJECTED and "downgrade" in (st.reason or ""), st
    assert _active_plaintext(world) == world.models["5.0.0"]

    # The version kept in the other slot is a downgrade with a reason; once 5.0.0 is revoked in
    # signed metadata, a downgrade to 1.0.0 has its signed reason too.
    active = agent.slots(MODEL).active()
    assert active is not None and active.version == "5.0.0"
    world.agent().check_signed_downgrade(MODEL, "2.0.0", active)
    erepo.revoke(world.repo, MODEL, "5.0.0", reason="test: withdrawn")
    world.agent().check_signed_downgrade(MODEL, "1.0.0", active)  # no longer refused
