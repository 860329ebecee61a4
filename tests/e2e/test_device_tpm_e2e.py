"""End to end on a TPM device: the same real world as test_device_e2e.py (update server, TUF
repository, signed and encrypted ONNX bundles, holdout validation), with the device key and the
trust anchors in a real TPM 2.0 emulator (swtpm) instead of SoftHSM2.

Covered: enroll (key generated in the TPM, anchors digest write-locked in NV), a full install and
a delta install addressed directly to the TPM key (HPKE: TPM2_ECDH_ZGen), holdout rejection,
trial failure with automatic rollback, operator rollback, and a power cut of the real
``edge-updater`` process together with the TPM (swtpm killed and restarted on the same state).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from device_updater.errors import EnrollmentError
from device_updater.keystore_tpm import TpmKeystore
from device_updater.state import Phase
from tests.e2e._powercut_harness import Cut, run_updater
from tests.e2e.conftest import MODEL, POLICY, World, _build_world
from tests.e2e.test_device_e2e import _active_plaintext, _cycle_until
from tests.fixtures.swtpm import Swtpm

pytestmark = pytest.mark.slow


@pytest.fixture
def tpm_world(tmp_path_factory: pytest.TempPathFactory,
              swtpm: Swtpm) -> Iterator[Callable[[], World]]:
    """Like ``e2e_world``, with the device's keystore in ``swtpm``."""
    with contextlib.ExitStack() as stack:
        def make() -> World:
            tmp = tmp_path_factory.mktemp("e2e-tpm")
            ks_dir = tmp / "device" / "keystore"
            keystore = TpmKeystore(swtpm.tcti, ks_dir)
            return _build_world(tmp, None, stack, keystore=keystore, keystore_config={
                "keystore_type": "tpm", "tcti": swtpm.tcti, "keystore_dir": ks_dir})
        yield make


def test_tpm_device_enrolls_installs_validates_and_rolls_back(
        tpm_world: Callable[[], World]) -> None:
    from device_updater.enrollment import enroll_device

    world = tpm_world()
    assert isinstance(world.keystore, TpmKeystore)
    anchors = world.keystore.trust_anchors()  # read back from NV-checked storage
    with pytest.raises(EnrollmentError, match="already enrolled"):
        enroll_device(world.config, world.keystore, enrollment_token="bogus",
                      trusted_root=(world.repo / "metadata" / "1.root.json").read_bytes(),
                      release_keys=anchors.release_keys)
    # v1: full bundle whose data key is wrapped to the TPM key; v2: a delta
    world.publish("1.0.0", world.models["1.0.0"])
    world.rollout("1.0.0")
    assert _cycle_until(world, "1.0.0", Phase.COMMITTED)["phase"] == "committed"
    world.publish("2.0.0", world.models["2.0.0"])
    world.rollout("2.0.0")
    assert _cycle_until(world, "2.0.0", Phase.COMMITTED)["phase"] == "committed"
    assert _active_plaintext(world) == world.models["2.0.0"]  # slot unsealed via the TPM
    # operator rollback to v1 and forward again
    agent = world.agent()
    assert agent.manual_rollback(MODEL).version == "1.0.0"
    assert _active_plaintext(world) == world.models["1.0.0"]
    agent.manual_rollback(MODEL)
    assert _active_plaintext(world) == world.models["2.0.0"]
    # v3 regressed: rejected by holdout validation, v2 keeps serving
    world.publish("3.0.0", world.models["3.0.0"], policy=POLICY)
    world.rollout("3.0.0")
    m = _cycle_until(world, "3.0.0", Phase.REJECTED, healthy=None)
    assert m["phase"] == "rejected" and "holdout validation failed" in m["reason"], m
    # v4 fails its trial: rolled back automatically
    world.publish("4.0.0", world.models["4.0.0"])
    world.rollout("4.0.0")
    m = _cycle_until(world, "4.0.0", Phase.ROLLED_BACK, healthy=False)
    assert m["phase"] == "rolled_back", m
    assert _active_plaintext(world) == world.models["2.0.0"]


def _write_config(world: World, path: Path) -> Path:
    cfg = world.config
    path.write_text(f"""
[server]
url = "{cfg.server_url}"
[device]
state_dir = "{cfg.state_dir}"
runtime_dir = "{cfg.runtime_dir}"
holdout_dir = "{cfg.holdout_dir}"
tags = ["cam"]
[keystore]
type = "tpm"
tcti = "{cfg.tcti}"
dir = "{cfg.keystore_dir}"
[poll]
interval = 60
[trial]
window_s = 0
max_failures = 1
[log]
json = true
""")
    return path


def test_power_cut_of_updater_and_tpm_mid_install_converges(
        tpm_world: Callable[[], World], swtpm: Swtpm) -> None:
    world = tpm_world()
    config = _write_config(world, world.tmp / f"edge-updater-{uuid.uuid4().hex[:6]}.toml")
    world.publish("1.0.0", world.models["1.0.0"])
    world.rollout("1.0.0")
    run = run_updater(config, cut=Cut(phase="installing"))
    assert run.killed, run.stderr_tail
    swtpm.kill()  # the power cut takes the TPM down too; its NV (key, anchors) survives
    swtpm.start()
    for _ in range(4):
        run = run_updater(config)
        assert run.rc == 0, run.stderr_tail
        st = world.agent().store(MODEL).load()
        if st.phase is Phase.TRIAL:
            world.healthy("1.0.0")
        if st.phase is Phase.COMMITTED:
            break
    st = world.agent().store(MODEL).load()
    assert (st.phase, st.version) == (Phase.COMMITTED, "1.0.0"), st
    assert _active_plaintext(world) == world.models["1.0.0"]
