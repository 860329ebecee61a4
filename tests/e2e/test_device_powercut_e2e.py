"""Whole-cycle power-cut campaign: the real ``edge-updater check`` (a subprocess, key in a
SoftHSM2 token) against the real update server (SQLite, in a thread) serving a real TUF
repository of signed, encrypted ONNX bundles, with the power cut (SIGKILL of the updater's whole
process group) at every persisted transition and at random instants during the download (the
server's target route is throttled, so the kills land mid-transfer and the next start resumes
with HTTP Range), the decrypt/delta/slot write, and validation.

After every cut the test checks the invariant:

* the state file is readable (never found corrupt and moved aside);
* the active slot decrypts (with the token key) to a model whose SHA-256 equals its signed
  manifest value *and* the SHA-256 of one of the published models;

and after restarting (plain ``check`` runs; the test plays the inference app and reports health
during a trial) that the device converges:

* v2 (good, delivered as a delta): committed; or, when the cut hit its trial, rolled back with
  the reason recorded (a crash during a trial must roll back);
* v3 (regressed): rejected by holdout validation, with the reason on the server;
* v4 (its trial fails; a full download): rolled back, with the reason on the server;
* too many cuts in a row: the target given up (crash loop) with the reason; the old version
  keeps running.

Kill points are picked for a busy 2-core machine: every persisted transition once (chained up to
three cuts per restart sequence, below the crash-loop cap) plus random instants.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from device_updater.config import Config
from device_updater.enrollment import enroll_device
from device_updater.keystore import Pkcs11Keystore, load_release_key_pem
from device_updater.layout import Layout
from device_updater.slots import BundleSealer, SlotStore
from device_updater.state import Phase, UpdateState
from device_updater.state_store import StateStore
from device_updater.trial import HealthLog, HealthReport
from edgepkg import keys as ekeys, repo as erepo
from edgepkg.bundle import package_model
from edgepkg.formats.build import blobs_dataset, onnx_mlp_classifier, train_mlp
from tests.e2e._powercut_harness import Cut, Run, ThrottledTargets, run_updater
from tests.edgepkg._repo_support import role_keys, write_key, write_public

MODEL = "clf"
POLICY = {"metric": "top1_accuracy", "max_regression": 0.02}
HIDDEN = 3072  # padded hidden layer: ~250 KB models (incompressible), quick to run
TARGET_RATE = 160 * 1024  # bytes/s for TUF targets: a full bundle takes ~1.5 s


def _models() -> tuple[dict[str, bytes], np.ndarray, np.ndarray]:
    """v1, v2 (v1 retouched: small delta), v3 (regressed), v4 (different padding: no delta)."""
    x, y = blobs_dataset(400, 16, 4, seed=7)
    (w1, b1), (w2, b2) = train_mlp(x, y, hidden=32, epochs=120, seed=1)

    def padded(seed: int, w2_: np.ndarray, b2_: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        # Extra hidden units with random inputs but zero output weights: same function, more bytes.
        rng = np.random.default_rng(seed)
        extra = HIDDEN - w1.shape[1]
        pw1 = np.concatenate([w1, rng.normal(size=(16, extra)).astype(np.float32)], axis=1)
        pb1 = np.concatenate([b1, rng.normal(size=extra).astype(np.float32)])
        pw2 = np.concatenate([w2_, np.zeros((extra, w2_.shape[1]), np.float32)])
        return [(pw1, pb1), (pw2, b2_)]

    perm = np.random.default_rng(3).permutation(w2.T).T.copy()
    return {
        "1.0.0": onnx_mlp_classifier(padded(11, w2, b2)),
        "2.0.0": onnx_mlp_classifier(padded(11, w2, b2 + np.float32(0.01))),
        "3.0.0": onnx_mlp_classifier(padded(11, perm, b2)),
        "4.0.0": onnx_mlp_classifier(padded(44, w2, b2 + np.float32(0.02))),
    }, x, y


@dataclass
class World:
    tmp: Path
    server_url: str
    operator: str
    keystore: Pkcs11Keystore
    config: Config
    config_path: Path
    models: dict[str, bytes]
    genuine: dict[str, str]  # plaintext sha256 -> version
    device_id: str
    snapshots: dict[str, Path] = field(default_factory=dict)
    # seconds from saving a phase to saving the next one, in an uninterrupted install:
    # {"full": {...}, "delta": {...}} (measured while making the base snapshots)
    durations: dict[str, dict[str, float]] = field(default_factory=dict)

    # -- server side ----------------------------------------------------------------------------
    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, self.server_url + path, timeout=30,
                                headers={"Authorization": f"Bearer {self.operator}"}, **kw)

    def stop_rollouts(self) -> None:
        for ro in self.api("GET", "/api/v1/rollouts").json()["rollouts"]:
            if ro["status"] in ("running", "paused"):
                self.api("POST", f"/api/v1/rollouts/{ro['id']}/abort")

    def rollout(self, version: str) -> str:
        self.stop_rollouts()
        r = self.api("POST", "/api/v1/rollouts", json={
            "model": MODEL, "version": version, "stages": [{"percent": 100}],
            "min_devices": 1})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def server_events(self, rollout_id: str) -> list[dict[str, Any]]:
        r = self.api("GET", f"/api/v1/devices/{self.device_id}/events", params={"limit": 200})
        assert r.status_code == 200, r.text
        return [e for e in r.json()["events"] if e.get("rollout_id") == rollout_id]

    # -- device side ----------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    def store(self) -> StateStore:
        return StateStore(Layout(self.state_dir).model_dir(MODEL) / "state.json")

    def slots(self) -> SlotStore:
        return SlotStore(Layout(self.state_dir).model_dir(MODEL) / "slots",
                         sealer=BundleSealer(self.keystore.recipient_key()))

    def snapshot(self, name: str) -> None:
        dest = self.tmp / "snapshots" / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.state_dir, dest)
        self.snapshots[name] = dest

    def restore(self, name: str) -> None:
        shutil.rmtree(self.state_dir)
        shutil.rmtree(self.config.runtime_dir, ignore_errors=True)
        shutil.copytree(self.snapshots[name], self.state_dir)

    def report_health(self, version: str, ok: bool) -> None:
        HealthLog(Layout(self.state_dir).health).append(HealthReport(
            time=time.time() + 0.001, status="healthy" if ok else "failing", model=MODEL,
            version=version, inferences=10, message=None if ok else "NaN outputs"))

    def interrupted_work(self) -> list[str]:
        """What a cut left half-done on disk (the next start-up must clean up or resume it)."""
        layout = Layout(self.state_dir)
        found = []
        if any(p.stat().st_size for p in layout.partial.glob("*.partial")):
            found.append("partial download")
        if list((layout.model_dir(MODEL) / "slots").glob("?/model.partial")):
            found.append("partial slot write")
        run = self.config.runtime_dir
        if list(run.glob(".work-*")):
            found.append("decrypt/delta work dir")
        if list(run.glob(".export-*")):
            found.append("validation export")
        return found

    def check_runtime_dir(self, after: str) -> None:
        """Plaintext only where the inference app gets it: the runtime dir holds the active
        model's export (if any) and nothing a killed updater left behind (scratch plaintext)."""
        run = self.config.runtime_dir
        left = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
        assert set(left) <= {f"{MODEL}.onnx"}, f"{after}: leftovers in the runtime dir: {left}"
        if left:
            slots = self.slots()
            active = b"".join(slots.open_plaintext(None))
            assert (run / f"{MODEL}.onnx").read_bytes() == active, (
                f"{after}: the exported model is not the active one")

    def check_invariant(self, after: str) -> tuple[UpdateState, str]:
        """The power-cut invariant; returns the persisted state and the active version."""
        model_dir = Layout(self.state_dir).model_dir(MODEL)
        st = self.store().load()
        assert not (model_dir / "state.json.corrupt").exists(), f"{after}: state file corrupt"
        slots = self.slots()
        active = slots.active_name()
        assert active is not None, f"{after}: no active slot"
        info = slots.verify(active)  # decrypts through the token; checks the signed sha256
        plain = hashlib.sha256(b"".join(slots.open_plaintext(active))).hexdigest()
        assert plain == info.summary.sha256, f"{after}: active plaintext differs from manifest"
        assert self.genuine.get(plain) == info.version, (
            f"{after}: active slot holds {info.version} {plain[:12]}, not a published model")
        return st, info.version


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, softhsm_module_token: Any) -> Iterator[World]:
    from werkzeug.serving import make_server

    from update_server import schema
    from update_server.app import create_app
    from update_server.auth import create_enrollment_token, create_operator_token
    from update_server.config import load_config
    from update_server.db import get_db

    tmp = tmp_path_factory.mktemp("powercut")
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
    models, x, y = _models()
    for version, model in models.items():
        src = tmp / f"{MODEL}-{version}.onnx"
        src.write_bytes(model)
        out = tmp / f"{MODEL}-{version}.edgepkg"
        package_model(src, out, name=MODEL, version=version,
                      signer=ekeys.load_signer(release),
                      recipients=[device_pub, ekeys.load_public_key(archive)],
                      policy=POLICY if version == "3.0.0" else None)
        erepo.publish(repo, [out])
    kinds = {(r.version, r.kind, r.base_version) for r in erepo.list_releases(repo)}
    assert ("2.0.0", "delta", "1.0.0") in kinds  # v2 arrives as a delta from v1
    assert not any(v == "4.0.0" and k == "delta" for v, k, _ in kinds)  # v4: full download
    holdout = tmp / "holdout"
    holdout.mkdir()
    np.save(holdout / "inputs.npy", x)
    np.save(holdout / "labels.npy", y)

    db_url = f"sqlite:///{tmp / 'server.db'}"
    schema.upgrade(db_url)
    cfg = load_config(env={}, database_url=db_url, poll_interval=60, testing=True,
                      repo_dir=str(repo), secret_key="powercut-secret")
    app = create_app(cfg)
    with app.app_context(), get_db(app).session() as s:
        operator = create_operator_token(s, name="powercut", role="admin")[1]
        enroll_token = create_enrollment_token(s, tags=["powercut"])[1]
    httpd = make_server("127.0.0.1", 0, ThrottledTargets(app, rate=TARGET_RATE), threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}"

    state, run_dir = tmp / "device", tmp / "run"
    config_path = tmp / "edge-updater.toml"
    config_path.write_text(f"""
[server]
url = "{url}"
read_timeout = 30
[device]
state_dir = "{state}"
runtime_dir = "{run_dir}"
holdout_dir = "{holdout}"
tags = ["cam"]
[keystore]
type = "pkcs11"
token_uri = "{softhsm_module_token.uri()}"
[poll]
interval = 60
[validation]
timeout_s = 60
[trial]
window_s = 0
max_failures = 1
[log]
json = true
level = "INFO"
""")
    from device_updater.config import load_config as load_device_config

    config = load_device_config(config_path)
    enr = enroll_device(config, keystore, enrollment_token=enroll_token,
                        trusted_root=(repo / "metadata" / "1.root.json").read_bytes(),
                        release_keys=[load_release_key_pem(write_public(release,
                                                                        tmp / "rel.pub"))])
    genuine = {hashlib.sha256(m).hexdigest(): v for v, m in models.items()}
    w = World(tmp, url, operator, keystore, config, config_path, models, genuine,
              enr.device_id)
    yield w
    httpd.shutdown()
    get_db(app).dispose()


# --- driving the device ------------------------------------------------------------------------


TRIAL_OK = {"1.0.0": True, "2.0.0": True, "3.0.0": True, "4.0.0": False}


@dataclass
class Tally:
    """What the campaign did (printed at the end; ``-s`` shows it)."""

    kills: dict[str, int] = field(default_factory=dict)  # kind of cut -> fired
    unfired: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    after_cut: dict[str, int] = field(default_factory=dict)  # persisted phase seen after a cut
    resumed_downloads: int = 0
    caught: dict[str, int] = field(default_factory=dict)  # work found interrupted by a cut
    runs: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.kills.values())


TALLY = Tally()


def _converge(world: World, target: str, cuts: list[Cut], label: str, *, must_fire: bool,
              max_runs: int = 9) -> tuple[UpdateState, str, list[Run]]:
    """Run ``check`` until ``target`` reaches an outcome, cutting the power per ``cuts`` (each
    cut is used by the next run until it fires); check the invariant after every run and play
    the inference app during a trial."""
    pending = list(cuts)
    runs: list[Run] = []
    for i in range(max_runs):
        cut = pending[0] if pending else None
        run = run_updater(world.config_path, "check", cut=cut)
        TALLY.runs += 1
        runs.append(run)
        TALLY.resumed_downloads += run.logged("resuming download")
        where = f"{label} run {i} ({cut.label() if cut else 'no cut'})"
        if run.killed:
            assert cut is not None
            pending.pop(0)
            kind = ("transition" if cut.delay == 0 and cut.phase
                    else f"random in {cut.message or cut.phase or 'start-up'}")
            TALLY.kills[kind] = TALLY.kills.get(kind, 0) + 1
        else:
            assert run.rc in (0, 1), f"{where}: rc {run.rc}\n{run.stderr_tail}"
            assert "Traceback" not in run.stderr_tail, f"{where}:\n{run.stderr_tail}"
        st, active = world.check_invariant(where)
        if run.killed:
            TALLY.after_cut[st.phase.value] = TALLY.after_cut.get(st.phase.value, 0) + 1
            for what in world.interrupted_work():
                TALLY.caught[what] = TALLY.caught.get(what, 0) + 1
            continue
        if st.phase is Phase.TRIAL and st.version == target:
            world.report_health(target, TRIAL_OK[target])
            continue
        if st.phase.terminal and st.version == target:
            if pending:  # the update ended before these cuts' moments came
                assert not must_fire, f"{where}: cuts never fired: {pending}; state {st}"
                TALLY.unfired += [f"{label}: {c.label()}" for c in pending]
            return st, active, runs
    raise AssertionError(f"{label}: no outcome after {max_runs} runs: {world.store().load()}")


def _expect_outcome(world: World, target: str, st: UpdateState, active: str, previous: str,
                    rollout_id: str, label: str) -> str:
    reason = st.reason or ""
    if "crash loop" in reason:
        assert st.phase in (Phase.REJECTED, Phase.ROLLED_BACK) and active == previous, (label, st)
        kind = "gave up (crash loop)"
    elif target == "3.0.0":
        assert st.phase is Phase.REJECTED and active == previous, (label, st)
        assert "holdout validation failed" in reason, (label, st)
        kind = "rejected by validation"
    elif target == "4.0.0":
        assert st.phase is Phase.ROLLED_BACK and active == previous and reason, (label, st)
        kind = "rolled back"
    elif st.phase is Phase.ROLLED_BACK:  # the cut hit the trial: a crash in a trial rolls back
        assert "restarted during the trial" in reason and active == previous, (label, st)
        kind = "rolled back"
    else:
        assert st.phase is Phase.COMMITTED and active == target, (label, st)
        kind = "committed"
    # The outcome and its reason reached the server (flushed by the last run).
    etype = {Phase.COMMITTED: "committed", Phase.REJECTED: "rejected",
             Phase.ROLLED_BACK: "rolled_back"}[st.phase]
    events = [e for e in world.server_events(rollout_id)
              if e["type"] == etype and e["version"] == target]
    assert events, f"{label}: no {etype} event for {target} on the server"
    if etype != "committed":
        assert events[0]["details"].get("reason"), (label, events[0])
    # A version kept in the other slot is intact too.
    slots = world.slots()
    other = "b" if slots.active_name() == "a" else "a"
    if slots.info(other) is not None:
        kept = slots.verify(other)
        assert world.genuine[kept.sha256] == kept.version, label
    return kind


def _scenario(world: World, base: str, target: str, cuts: list[Cut], label: str, *,
              must_fire: bool = True) -> None:
    t0 = time.monotonic()
    world.restore(base)
    rollout_id = world.rollout(target)
    previous = "1.0.0" if base == "v1" else "2.0.0"
    st, active, _ = _converge(world, target, cuts, label, must_fire=must_fire)
    kind = _expect_outcome(world, target, st, active, previous, rollout_id, label)
    world.check_runtime_dir(label)
    TALLY.outcomes[f"{target} {kind}"] = TALLY.outcomes.get(f"{target} {kind}", 0) + 1
    TALLY.seconds += time.monotonic() - t0


@pytest.fixture(scope="module")
def bases(world: World) -> World:
    """Snapshots of the device state: ``v1`` (1.0.0 committed) and ``v2`` (2.0.0 committed,
    1.0.0 kept), each reached by uninterrupted ``check`` runs."""
    world.rollout("1.0.0")
    st, active, runs = _converge(world, "1.0.0", [], "base v1", must_fire=True)
    assert st.phase is Phase.COMMITTED and active == "1.0.0", st
    world.durations["full"] = _durations(runs[0])
    world.snapshot("v1")
    rollout_id = world.rollout("2.0.0")
    st, active, runs = _converge(world, "2.0.0", [], "base v2", must_fire=True)
    world.durations["delta"] = _durations(runs[0])
    assert _expect_outcome(world, "2.0.0", st, active, "1.0.0", rollout_id, "base v2") \
        == "committed"
    world.snapshot("v2")
    return world


def _durations(run: Run) -> dict[str, float]:
    t = run.phase_times
    return {p: t[i + 1][1] - s for i, (p, s) in enumerate(t[:-1])}


def T(phase: str) -> Cut:
    """A cut right after ``phase`` is persisted (the action it names has not run yet)."""
    return Cut(phase)


# Every persisted transition of each update, chained (at most three cuts per restart sequence,
# under the crash-loop cap, except the sequence that checks the cap itself).
TRANSITION_CHAINS: dict[str, list[tuple[str, list[Cut]]]] = {
    "2.0.0": [  # good, delta from 1.0.0
        ("v1", [T("downloading"), T("installing"), T("switching")]),
        ("v1", [T("verifying"), T("validating"), T("committed")]),
        ("v1", [T("trial")]),
    ],
    "3.0.0": [  # regressed: rejected by holdout validation
        ("v2", [T("rejected")]),
        # four crashes in a row: past the cap, the target is given up with the reason
        ("v2", [T("downloading"), T("verifying"), T("installing"), T("validating")]),
    ],
    "4.0.0": [  # full download; its trial fails
        ("v2", [T("verifying"), T("validating"), T("trial")]),
        ("v2", [T("downloading"), T("switching"), T("rolled_back")]),
    ],
}


@pytest.mark.parametrize("target", sorted(TRANSITION_CHAINS))
def test_power_cut_at_every_persisted_transition_converges(bases: World, target: str) -> None:
    for n, (base, cuts) in enumerate(TRANSITION_CHAINS[target]):
        _scenario(bases, base, target, cuts, f"{target} chain {n}")


def test_power_cut_at_random_instants_in_download_install_and_validation(bases: World) -> None:
    rng = random.Random(20261122)
    full, delta = bases.durations["full"], bases.durations["delta"]

    def at(phase: str, lo: float, hi: float, kind: dict[str, float] = full) -> Cut:
        """A cut at a random fraction in [lo, hi) of ``phase``'s uninterrupted duration."""
        return Cut(phase, max(0.001, rng.uniform(lo, hi) * kind[phase]))

    def resumed(lo: float, hi: float) -> Cut:  # while a start-up continues a partial download
        return Cut(None, max(0.001, rng.uniform(lo, hi) * full["downloading"] / 3),
                   message="resuming download")

    plans: list[tuple[str, str, list[Cut]]] = [
        # 4.0.0 is a full (throttled) download: cut it mid-transfer, cut the resumed transfer
        # (HTTP Range) again, then cut the decrypt + slot write / the holdout validation
        ("v2", "4.0.0", [at("downloading", 0.15, 0.6), resumed(0.1, 0.9),
                         at("installing", 0.2, 1.0)]),
        ("v2", "4.0.0", [at("downloading", 0.15, 0.6), resumed(0.1, 0.9),
                         at("validating", 0.05, 0.8)]),
        ("v2", "4.0.0", [at("downloading", 0.4, 0.95), at("installing", 0.2, 1.0),
                         Cut(None, rng.uniform(0.3, 1.5))]),
        # 2.0.0 is a delta: cut the patch decrypt / rebuild / slot write, then the start-up
        # and recovery of the next process, then the switch
        ("v1", "2.0.0", [at("installing", 0.2, 1.0, delta), Cut(None, rng.uniform(0.3, 1.5)),
                         at("switching", 0.0, 0.8, delta)]),
        ("v2", "3.0.0", [at("verifying", 0.0, 0.8, delta), at("validating", 0.05, 0.8, delta),
                         Cut(None, rng.uniform(0.3, 1.5))]),
    ]
    for n, (base, target, cuts) in enumerate(plans):
        _scenario(bases, base, target, cuts, f"random {target} #{n}", must_fire=False)
    assert TALLY.resumed_downloads >= 2, "interrupted downloads were not resumed"


def test_start_up_removes_plaintext_scratch_left_by_a_killed_updater(bases: World) -> None:
    world = bases
    world.restore("v2")
    world.stop_rollouts()
    dead = subprocess.Popen(["true"])
    dead.wait()
    scratch = world.config.runtime_dir / f".work-{dead.pid}"
    scratch.mkdir(parents=True)
    (scratch / "old").write_bytes(world.models["2.0.0"])  # what a cut mid-delta leaves
    run = run_updater(world.config_path, "check")
    assert run.rc in (0, 1), run.stderr_tail
    assert not scratch.exists()
    world.check_invariant("after removing scratch")
    world.check_runtime_dir("after removing scratch")


def test_campaign_summary(bases: World) -> None:
    print(f"\npower-cut campaign: {TALLY.total} kill points tried {TALLY.kills}; "
          f"not reached: {len(TALLY.unfired)} {TALLY.unfired}; phase after the cut: "
          f"{TALLY.after_cut}; outcomes: {TALLY.outcomes}; resumed downloads: "
          f"{TALLY.resumed_downloads}; interrupted work found after cuts: {TALLY.caught}; "
          f"{TALLY.runs} updater runs in {TALLY.seconds:.0f}s; phase durations: "
          f"{ {k: {p: round(v, 3) for p, v in d.items()} for k, d in bases.durations.items()} }")
    if TALLY.runs:  # (this test alone runs no campaign)
        assert TALLY.total >= 25
