"""End to end: the real update server (SQLite, in a thread), a real TUF repository made with
``edgepkg.repo``, real signed+encrypted bundles of real ONNX models, and the device agent with its
key in a SoftHSM2 token.

Scenario (one device, one model ``clf``): v1 installed and committed; v2 arrives as a delta and
is committed; v3 (regressed) is rejected by holdout validation and the reason reaches the
server; v4 fails its trial and is rolled back; operator rollback; downgrade refused; a bundle for
another device refused; tampered download refused; swapped root refused.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from device_updater.config import Config
from device_updater.agent import Agent
from device_updater.enrollment import enroll_device
from device_updater.status import status
from device_updater.validator import HoldoutValidator
from device_updater.errors import EnrollmentError
from device_updater.keystore import Pkcs11Keystore, load_release_key_pem
from device_updater.state import Phase
from device_updater.trial import HealthReport, TrialPolicy
from device_updater.tuf_client import TrustAnchorMismatchError
from edgepkg import keys as ekeys
from edgepkg import repo as erepo
from edgepkg.bundle import package_model
from edgepkg.formats.build import blobs_dataset, onnx_mlp_classifier, train_mlp
from tests.test_repo_support import role_keys, write_key, write_public

MODEL = "clf"
POLICY = {"metric": "top1_accuracy", "max_regression": 0.02}


def _trained(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    x, y = blobs_dataset(600, 16, 4, seed=7)
    return train_mlp(x, y, hidden=128, epochs=150, seed=seed)


@dataclass
class World:
    tmp: Path
    repo: Path
    release_ref: str
    archive_ref: str
    device_pub: Any
    server_url: str
    app: Any
    operator: str
    keystore: Pkcs11Keystore
    config: Config
    holdout: Path
    models: dict[str, bytes]

    def bundle(self, version: str, model: bytes, *, recipients: list[Any] | None = None,
               policy: dict[str, Any] | None = None) -> Path:
        src = self.tmp / f"{MODEL}-{version}.onnx"
        src.write_bytes(model)
        out = self.tmp / f"{MODEL}-{version}.edgepkg"
        package_model(src, out, name=MODEL, version=version,
                      signer=ekeys.load_signer(self.release_ref),
                      recipients=recipients or [self.device_pub,
                                                ekeys.load_public_key(self.archive_ref)],
                      policy=policy)
        return out

    def publish(self, version: str, model: bytes, **kw: Any) -> None:
        erepo.publish(self.repo, [self.bundle(version, model, **kw)])

    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = requests.request(method, self.server_url + path,
                             headers={"Authorization": f"Bearer {self.operator}"}, timeout=10,
                             **kw)
        return r

    def rollout(self, version: str) -> str:
        for ro in self.api("GET", "/api/v1/rollouts").json()["rollouts"]:
            if ro["status"] in ("running", "paused"):
                self.api("POST", f"/api/v1/rollouts/{ro['id']}/abort")
        r = self.api("POST", "/api/v1/rollouts", json={
            "model": MODEL, "version": version, "stages": [{"percent": 100}],
            "min_devices": 1})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def agent(self, **kw: Any) -> Agent:
        validator = HoldoutValidator(self.holdout, runtime_dir=self.config.runtime_dir,
                                     cache_path=self.config.state_dir / "vcache.json",
                                     timeout=60)
        return Agent(self.config, self.keystore, validator=validator,
                     trial_policy=TrialPolicy(window_seconds=0, max_failures=1,
                                              deadline_seconds=3600), **kw)

    def healthy(self, version: str, ok: bool = True) -> None:
        from device_updater.layout import Layout
        from device_updater.trial import HealthLog

        HealthLog(Layout(self.config.state_dir).health).append(HealthReport(
            time=time.time() + 0.001, status="healthy" if ok else "failing", model=MODEL,
            version=version, inferences=10, message=None if ok else "NaN outputs"))

    def device_events(self) -> list[dict[str, Any]]:
        did = status(self.config)["device_id"]
        r = self.api("GET", f"/api/v1/devices/{did}/events")
        assert r.status_code == 200, r.text
        body = r.json()
        return list(body.get("events", body if isinstance(body, list) else []))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, softhsm_module_token: Any) -> Iterator[World]:
    from werkzeug.serving import make_server

    from update_server import schema
    from update_server.app import create_app
    from update_server.auth import create_enrollment_token, create_operator_token
    from update_server.config import load_config
    from update_server.db import get_db

    tmp = tmp_path_factory.mktemp("e2e")
    keystore = Pkcs11Keystore(softhsm_module_token.uri())
    device_pub = keystore.ensure_device_key()
    keys = role_keys(tmp / "keys")
    release = write_key(tmp / "keys" / "release.pem", "ed25519")
    archive = write_key(tmp / "keys" / "archive.pem", "p256")
    dev_pub_file = tmp / "keys" / "device.pub.pem"
    dev_pub_file.write_bytes(ekeys.public_key_pem(device_pub))
    repo = tmp / "repo"
    erepo.init_repo(repo, keys, release_signer=release, archive_key=archive,
                    recipients=[str(dev_pub_file)])

    # models: v1, v2 (small retrain: a delta), v3 (regressed), v4 (fine on holdout)
    x, y = blobs_dataset(400, 16, 4, seed=7)
    w1 = _trained(1)
    w2 = [(w1[0][0], w1[0][1]), (w1[1][0], w1[1][1] + np.float32(0.01))]
    rng = np.random.default_rng(3)
    w3 = [(w1[0][0], w1[0][1]), (rng.permutation(w1[1][0].T).T.copy(), w1[1][1])]
    w4 = [(w1[0][0], w1[0][1]), (w1[1][0], w1[1][1] + np.float32(0.02))]
    w5 = [(w1[0][0], w1[0][1]), (w1[1][0], w1[1][1] + np.float32(0.03))]
    models = {v: onnx_mlp_classifier(w) for v, w in
              (("1.0.0", w1), ("2.0.0", w2), ("3.0.0", w3), ("4.0.0", w4), ("5.0.0", w5))}
    holdout = tmp / "holdout"
    holdout.mkdir()
    np.save(holdout / "inputs.npy", x)
    np.save(holdout / "labels.npy", y)

    db_url = f"sqlite:///{tmp / 'server.db'}"
    schema.upgrade(db_url)
    cfg = load_config(env={}, database_url=db_url, poll_interval=60, testing=True,
                      repo_dir=str(repo), secret_key="e2e-secret")
    app = create_app(cfg)
    with app.app_context(), get_db(app).session() as s:
        operator = create_operator_token(s, name="e2e", role="admin")[1]
        enroll_token = create_enrollment_token(s, tags=["e2e"])[1]
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_port}"

    state = tmp / "device"
    config = Config(server_url=url, state_dir=state, runtime_dir=tmp / "run",
                    holdout_dir=holdout, keystore_type="pkcs11",
                    token_uri=softhsm_module_token.uri(), poll_interval=60, tags=("cam",))
    w = World(tmp, repo, release, archive, device_pub, url, app, operator, keystore, config,
              holdout, models)
    enroll_device(config, keystore, enrollment_token=enroll_token,
                  trusted_root=(repo / "metadata" / "1.root.json").read_bytes(),
                  release_keys=[load_release_key_pem(write_public(release, tmp / "rel.pub"))])
    yield w
    httpd.shutdown()
    get_db(app).dispose()


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


def test_enrolled_device_has_token_anchors_and_refuses_second_enrollment(world: World) -> None:
    anchors = world.keystore.trust_anchors()
    assert len(anchors.release_keys) == 1
    with pytest.raises(EnrollmentError, match="already enrolled"):
        enroll_device(world.config, world.keystore, enrollment_token="bogus",
                      trusted_root=(world.repo / "metadata" / "1.root.json").read_bytes(),
                      release_keys=anchors.release_keys)


def test_v1_full_install_then_v2_via_delta(world: World) -> None:
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
    from edgepkg.protocol import Assignment

    agent.apply_assignment(Assignment(MODEL, "1.0.0", f"models/{MODEL}/1.0.0/{MODEL}-1.0.0.edgepkg",
                                        None, None, False))
    st = agent.store(MODEL).load()
    assert st.phase is Phase.REJECTED and "downgrade" in (st.reason or "")
    assert _active_plaintext(world) == world.models["2.0.0"]


def test_v3_rejected_by_holdout_validation_with_reason_on_server(world: World) -> None:
    world.publish("3.0.0", world.models["3.0.0"], policy=POLICY)
    world.rollout("3.0.0")
    m = _cycle_until(world, "3.0.0", Phase.REJECTED, healthy=None)
    assert m["phase"] == "rejected" and "holdout validation failed" in m["reason"], m
    assert "dropped" in m["reason"]
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
    from edgepkg.protocol import Assignment

    agent = world.agent()
    slots = {s["version"] for s in status(world.config)["models"][MODEL]["slots"].values() if s}
    assert "1.0.0" not in slots  # v3/v4/v5 attempts replaced v1 in the inactive slot
    target = f"models/{MODEL}/1.0.0/{MODEL}-1.0.0.edgepkg"
    agent.apply_assignment(Assignment(MODEL, "1.0.0", target, None, None, True))
    st = agent.store(MODEL).load()
    assert st.phase is Phase.REJECTED and "downgrade" in (st.reason or ""), st
    assert _active_plaintext(world) == world.models["2.0.0"]

    # Once 2.0.0 is revoked in signed metadata, a downgrade to 1.0.0 has its signed reason.
    active = agent.slots(MODEL).active()
    assert active is not None and active.version == "2.0.0"
    erepo.revoke(world.repo, MODEL, "2.0.0", reason="test: withdrawn")
    world.agent().check_signed_downgrade(MODEL, "1.0.0", active)  # no longer refused
