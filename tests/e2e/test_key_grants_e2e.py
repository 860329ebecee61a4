"""Key grants end to end: devices enrolled AFTER a release was packaged and published install it
through a key grant, with no repackaging, through the real server (its key-service key in a
SoftHSM2 token) and the real agent (its device key in another token).

Scenarios: the late device installs v1 (full) and then v2 (delta, with the delta's own grant);
every grant is audited and the directly-encrypted device gets none; a disabled device gets no
grant; a grant for another device is refused by the device with the reason; an expired grant
waits for the next check-in's fresh one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from device_updater.enrollment import enroll_device
from device_updater.errors import ServerRefusedError
from device_updater.keystore import Pkcs11Keystore, load_release_key_pem
from device_updater.state import Phase
from edgepkg import repo as erepo
from edgepkg.grants import make_grant
from edgepkg.keys import load_public_key, load_recipient_key, public_key_id
from edgepkg.protocol import Assignment, full_target_name
from tests.e2e.conftest import MODEL, World
from tests.edgepkg._repo_support import write_public
from tests.fixtures.softhsm import init_token


def _late_device(w: World, name: str) -> World:
    """A device that enrolls now, after the bundles were packaged (not a recipient of any):
    its own SoftHSM2 token, state directory and agent, against the same server and repository."""
    token = init_token(f"{name}-{uuid.uuid4().hex[:8]}")
    keystore = Pkcs11Keystore(token.uri())
    keystore.ensure_device_key()
    r = w.api("POST", "/api/v1/enrollment-tokens", json={"max_uses": 1, "tags": ["e2e"]})
    assert r.status_code == 201, r.text
    config = dataclasses.replace(w.config, state_dir=w.tmp / name,
                                 runtime_dir=w.tmp / f"{name}-run", token_uri=token.uri())
    enroll_device(config, keystore, enrollment_token=r.json()["token"],
                  trusted_root=(w.repo / "metadata" / "1.root.json").read_bytes(),
                  release_keys=[load_release_key_pem(write_public(w.release_ref,
                                                                  w.tmp / f"{name}-rel.pub"))])
    return dataclasses.replace(w, config=config, keystore=keystore)


def _device_id(w: World) -> str:
    return w.keystore.recipient_key().key_id


def _cycle_until(w: World, version: str, phase: Phase, cycles: int = 4) -> Any:
    agent = w.agent()
    agent.recover()
    st = agent.store(MODEL).load()
    for _ in range(cycles):
        assert agent.run_cycle().online
        st = agent.store(MODEL).load()
        if st.phase is Phase.TRIAL:
            w.healthy(version)
        if st.phase is phase and st.version == version:
            break
    agent.run_cycle()  # flush events
    return st


def _grants(w: World, device_id: str) -> list[dict[str, Any]]:
    r = w.api("GET", f"/api/v1/grants?device_id={device_id}")
    assert r.status_code == 200, r.text
    return list(r.json()["grants"])


@pytest.fixture
def world(e2e_world: Callable[..., World]) -> World:
    w = e2e_world(key_service=True)
    w.publish("1.0.0", w.models["1.0.0"])  # packaged for device 1 and the key service only
    return w


def test_device_enrolled_after_publishing_installs_full_then_delta_through_grants(
        world: World) -> None:
    late = _late_device(world, "late")
    late_id = _device_id(late)
    info = erepo.list_releases(world.repo)[0]
    assert late_id not in _recipients(world, info)  # really not a recipient
    rollout = world.rollout("1.0.0")
    st = _cycle_until(late, "1.0.0", Phase.COMMITTED)
    assert (st.phase, st.version) == (Phase.COMMITTED, "1.0.0"), st
    assert b"".join(late.agent().slots(MODEL).open_plaintext(None)) == world.models["1.0.0"]

    grants = _grants(world, late_id)
    assert [(g["version"], g["target"], g["issuer"]) for g in grants] == [
        ("1.0.0", full_target_name(MODEL, "1.0.0"), f"rollout:{rollout}")]
    assert grants[0]["key_service_key_id"] == public_key_id(world.key_service_pub)
    # Device 1 is a direct recipient: it installs with its own key and is granted nothing.
    assert _cycle_until(world, "1.0.0", Phase.COMMITTED).phase is Phase.COMMITTED
    assert _grants(world, _device_id(world)) == []

    # v2: the server offers the delta from 1.0.0 with its own grant (a different data key).
    world.publish("2.0.0", world.models["2.0.0"])
    delta = [r for r in erepo.list_releases(world.repo) if r.kind == "delta"]
    assert delta, "publish made no delta"
    world.rollout("2.0.0")
    st = _cycle_until(late, "2.0.0", Phase.COMMITTED)
    assert (st.phase, st.version) == (Phase.COMMITTED, "2.0.0"), st
    assert b"".join(late.agent().slots(MODEL).open_plaintext(None)) == world.models["2.0.0"]
    installed = {e["version"]: e["details"]["method"]
                 for e in _events(late) if e["type"] == "installed"}
    assert installed == {"1.0.0": "full", "2.0.0": "delta"}
    targets = {g["target"] for g in _grants(world, late_id) if g["version"] == "2.0.0"}
    assert delta[0].target_path in targets
    # Cached: another check-in does not issue the same grants again.
    count = len(_grants(world, late_id))
    late.agent().run_cycle()
    assert len(_grants(world, late_id)) == count


def test_disabled_device_gets_no_grant(world: World) -> None:
    late = _late_device(world, "off")
    late_id = _device_id(late)
    r = world.api("PATCH", f"/api/v1/devices/{late_id}", json={"status": "disabled"})
    assert r.status_code == 200, r.text
    world.rollout("1.0.0")
    agent = late.agent()
    agent.recover()
    with pytest.raises(ServerRefusedError, match="disabled"):
        agent.run_cycle()  # the server refuses a disabled device's check-in
    assert _grants(world, late_id) == []
    # Nor can an operator hand it one for offline delivery.
    r = world.api("POST", "/api/v1/grants",
                  json={"device_id": late_id, "target": full_target_name(MODEL, "1.0.0")})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "device_disabled"


def test_grant_for_another_device_is_refused_by_the_device(world: World) -> None:
    a, b = _late_device(world, "dev-a"), _late_device(world, "dev-b")
    target = full_target_name(MODEL, "1.0.0")
    r = world.api("POST", "/api/v1/grants", json={"device_id": _device_id(a), "target": target})
    assert r.status_code == 201, r.text
    assert _grants(world, _device_id(a))[0]["issuer"] == "operator:e2e"
    stolen = r.json()["grant"]
    agent = b.agent()
    agent.recover()
    agent.apply_assignment(Assignment(model=MODEL, version="1.0.0", target=target,
                                      key_grants={target: stolen}))
    st = agent.store(MODEL).load()
    assert st.phase is Phase.REJECTED, st
    assert "key grant is for device" in (st.reason or ""), st.reason
    assert agent.slots(MODEL).active() is None


def test_expired_grant_waits_for_a_fresh_one_from_the_next_checkin(world: World) -> None:
    late = _late_device(world, "slow")
    late_id = _device_id(late)
    target = full_target_name(MODEL, "1.0.0")
    world.rollout("1.0.0")
    agent = late.agent()
    agent.recover()
    # A grant issued ten days ago for one day: the device was offline too long to use it.
    release = next(r for r in erepo.list_releases(world.repo) if r.target_path == target)
    then = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    old = make_grant(erepo.target_file(world.repo, release),
                     load_recipient_key(world.app.config["EDGEPKG"].key_service_key),
                     load_public_key(late.keystore.recipient_key().public_key()), late_id,
                     expires_at=then + dt.timedelta(days=1), now=then)
    agent.apply_assignment(Assignment(model=MODEL, version="1.0.0", target=target,
                                      rollout_id="r-old",
                                      key_grants={target: json.loads(old.to_json())}))
    st = agent.store(MODEL).load()
    assert st.phase is Phase.INSTALLING and "expired" in (agent.last_error or ""), st
    # The next check-in brings a fresh grant; the install resumes where it stopped.
    st = _cycle_until(late, "1.0.0", Phase.COMMITTED)
    assert (st.phase, st.version) == (Phase.COMMITTED, "1.0.0"), st


def _recipients(w: World, release: Any) -> set[str]:
    from edgepkg.bundle import read_bundle_info

    return set(read_bundle_info(erepo.target_file(w.repo, release)).recipient_key_ids)


def _events(w: World) -> list[dict[str, Any]]:
    r = w.api("GET", f"/api/v1/devices/{_device_id(w)}/events")
    assert r.status_code == 200, r.text
    body = r.json()
    return list(body.get("events", body if isinstance(body, list) else []))

