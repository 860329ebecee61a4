"""Models bound to the device's measured state: the slot key sealed to TPM PCR values (swtpm).

Unit level: seal/unseal through the PCR-bound slot key, a PCR extend locks the slots
(:class:`SealedToOtherStateError`), ``reseal`` with the owner authorisation restores access and
is refused without it, a keystore directory on another TPM cannot open anything, and
``pcr_binding = false`` seals as before. Daemon level (the real e2e world on swtpm): after the
boot chain changes the agent reports it, keeps the active slot, pauses the update, ``status``
and ``current-model`` say why, and ``edge-updater reseal`` lets the update finish.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from device_updater import _tpm
from device_updater.errors import KeystoreError, SealedToOtherStateError, SealError
from device_updater.keystore_tpm import TpmKeystore
from device_updater.pcr_binding import SLOT_KEY_FILE, read_sealed_state
from device_updater.sealing import BundleSealer, sealer_for
from tests.fixtures.swtpm import Swtpm

OWNER = b"owner-secret-for-tests"
MODEL_BYTES = b"model bytes " * 2000


def extend_pcr(tcti: str, index: int) -> None:
    """What a changed boot chain does: a different measurement extended into a bound PCR."""
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
    from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA

    with _tpm.tpm_session(tcti, "extending a PCR") as ctx:
        ctx.pcr_extend(getattr(ESYS_TR, f"PCR{index}"),
                       TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256,
                                                   digest=TPMU_HA(sha256=b"\x5a" * 32))]))


def set_owner_auth(tcti: str, auth: bytes) -> None:
    """Provision an owner authorisation, as a fleet should (tpm2_changeauth -c owner)."""
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_AUTH

    with _tpm.tpm_session(tcti, "setting the owner authorisation") as ctx:
        ctx.hierarchy_change_auth(ESYS_TR.OWNER, TPM2B_AUTH(auth))


def _seal(sealer: BundleSealer, data: bytes, aad: bytes = b"aad") -> bytes:
    out = io.BytesIO()
    w = sealer.seal(out, aad)
    w.write(data)
    w.close()
    return out.getvalue()


def _unseal(sealer: BundleSealer, blob: bytes, aad: bytes = b"aad") -> bytes:
    return b"".join(sealer.unseal(io.BytesIO(blob), aad))


@pytest.fixture
def owned_ks(swtpm: Swtpm, tmp_path: Path) -> TpmKeystore:
    """A TPM with an owner authorisation, provisioned (device key + PCR-bound slot key)."""
    set_owner_auth(swtpm.tcti, OWNER)
    ks = TpmKeystore(swtpm.tcti, tmp_path / "keystore", owner_auth=OWNER)
    ks.ensure_device_key()
    return ks


def _sealer(ks: TpmKeystore) -> BundleSealer:
    return sealer_for(ks, ks.recipient_key())


def test_slot_seals_and_unseals_through_the_pcr_bound_slot_key(owned_ks: TpmKeystore) -> None:
    assert (owned_ks.dir / SLOT_KEY_FILE).exists()
    blob = _seal(_sealer(owned_ks), MODEL_BYTES)
    assert b'"binding":"tpm-pcr-v1"' in blob[:2048]
    assert _unseal(_sealer(owned_ks), blob) == MODEL_BYTES
    # the device key alone no longer opens it: the stream key needs the TPM-sealed slot key
    with pytest.raises(Exception, match="not configured for it"):
        _unseal(BundleSealer(owned_ks.recipient_key()), blob)
    described = owned_ks.describe()["pcr_binding"]
    assert described["pcrs"] == [0, 2, 4, 7] and described["sealed_state"] is None


def test_extending_a_bound_pcr_locks_the_slots_with_a_typed_error(
        swtpm: Swtpm, owned_ks: TpmKeystore) -> None:
    blob = _seal(_sealer(owned_ks), MODEL_BYTES)
    extend_pcr(swtpm.tcti, 7)  # e.g. Secure Boot settings changed
    with pytest.raises(SealedToOtherStateError, match="reseal"):
        _unseal(_sealer(owned_ks), blob)
    with pytest.raises(SealedToOtherStateError):  # nothing new is sealed in that state either
        _seal(_sealer(owned_ks), b"new model")
    state = read_sealed_state(owned_ks.dir)
    assert state is not None and state["state"] == "sealed_to_other_state"
    assert state["pcrs"] == [0, 2, 4, 7]


def test_an_unbound_pcr_does_not_matter(swtpm: Swtpm, owned_ks: TpmKeystore) -> None:
    blob = _seal(_sealer(owned_ks), MODEL_BYTES)
    extend_pcr(swtpm.tcti, 16)  # the debug PCR, not in [0, 2, 4, 7]
    assert _unseal(_sealer(owned_ks), blob) == MODEL_BYTES


def test_reseal_with_owner_auth_restores_access_and_is_refused_without(
        swtpm: Swtpm, owned_ks: TpmKeystore, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = _seal(_sealer(owned_ks), MODEL_BYTES)
    extend_pcr(swtpm.tcti, 4)  # a new boot loader / kernel
    with pytest.raises(SealedToOtherStateError):
        _unseal(_sealer(owned_ks), blob)
    monkeypatch.delenv(_tpm.OWNER_AUTH_ENV, raising=False)
    no_owner = TpmKeystore(swtpm.tcti, owned_ks.dir)
    guard = no_owner.slot_key_guard()
    assert guard is not None
    with pytest.raises(KeystoreError, match="owner authorisation"):
        guard.reseal()
    monkeypatch.setenv(_tpm.OWNER_AUTH_ENV, "a wrong guess")
    with pytest.raises(KeystoreError, match="owner authorisation"):
        guard.reseal()
    with pytest.raises(SealedToOtherStateError):  # refusals changed nothing
        _unseal(_sealer(no_owner), blob)
    monkeypatch.setenv(_tpm.OWNER_AUTH_ENV, OWNER.decode())
    assert guard.reseal().pcrs == (0, 2, 4, 7)
    assert _unseal(_sealer(no_owner), blob) == MODEL_BYTES  # the same slots open again
    assert read_sealed_state(owned_ks.dir) is None
    # and the new binding holds: another change locks them again
    extend_pcr(swtpm.tcti, 4)
    with pytest.raises(SealedToOtherStateError):
        _unseal(_sealer(no_owner), blob)


def test_reseal_can_choose_other_pcrs(swtpm: Swtpm, owned_ks: TpmKeystore) -> None:
    blob = _seal(_sealer(owned_ks), MODEL_BYTES)
    guard = owned_ks.slot_key_guard()
    assert guard is not None
    assert guard.reseal([7]).pcrs == (7,)
    extend_pcr(swtpm.tcti, 0)  # no longer bound
    assert _unseal(_sealer(owned_ks), blob) == MODEL_BYTES
    with pytest.raises(KeystoreError, match="distinct PCRs"):
        guard.reseal([7, 7, 30])


def test_keystore_dir_on_another_tpm_opens_nothing(swtpm: Swtpm, owned_ks: TpmKeystore,
                                                   tmp_path: Path) -> None:
    """A disk moved to another machine: the sealed blobs do not load in another TPM."""
    blob = _seal(_sealer(owned_ks), MODEL_BYTES)
    other = Swtpm(tmp_path / "other-tpm-state")
    (tmp_path / "other-tpm-state").mkdir()
    other.start()
    try:
        moved = tmp_path / "moved-keystore"
        shutil.copytree(owned_ks.dir, moved)
        thief = TpmKeystore(other.tcti, moved)
        guard = thief.slot_key_guard()
        assert guard is not None
        with pytest.raises(SealedToOtherStateError, match="no storage key"):
            guard.secret()
        # even with the other TPM fully provisioned (its own storage key) the blobs don't load
        thief.ensure_device_key()
        with pytest.raises(SealedToOtherStateError):
            guard.secret()
        with pytest.raises(SealError, match="does not open"):  # another device key, too
            _unseal(_sealer(thief), blob)
    finally:
        other.stop()


def test_pcr_binding_off_seals_as_before(swtpm: Swtpm, tmp_path: Path) -> None:
    ks = TpmKeystore(swtpm.tcti, tmp_path / "ks", pcr_binding=False)
    ks.ensure_device_key()
    assert ks.slot_key_guard() is None
    assert not (tmp_path / "ks" / SLOT_KEY_FILE).exists()
    blob = _seal(_sealer(ks), MODEL_BYTES)
    assert b"binding" not in blob[:2048]
    extend_pcr(swtpm.tcti, 7)
    assert _unseal(_sealer(ks), blob) == MODEL_BYTES
    assert _unseal(BundleSealer(ks.recipient_key()), blob) == MODEL_BYTES
    # a slot written before binding was turned on still opens with it on (until rewritten)
    bound = TpmKeystore(swtpm.tcti, tmp_path / "ks")
    assert _unseal(_sealer(bound), blob) == MODEL_BYTES


def test_config_pcr_binding_defaults_on_for_tpm_and_checks_pcrs(tmp_path: Path) -> None:
    from device_updater.config import parse_config
    from device_updater.errors import ConfigError
    from device_updater.keystore_tpm import keystore_from_config

    base = {"server": {"url": "http://x"}, "device": {"state_dir": str(tmp_path)}}
    cfg = parse_config({**base, "keystore": {"type": "tpm", "tcti": "swtpm:port=1"}}, tmp_path)
    assert cfg.pcr_binding is None and cfg.pcrs == (0, 2, 4, 7)
    assert keystore_from_config(cfg).slot_key_guard() is not None
    off = parse_config({**base, "keystore": {"type": "tpm", "tcti": "swtpm:port=1",
                                             "pcr_binding": False}}, tmp_path)
    assert keystore_from_config(off).slot_key_guard() is None
    for bad in ([], [1, 1], [24], ["7"]):
        with pytest.raises(ConfigError, match="pcrs"):
            parse_config({**base, "keystore": {"type": "tpm", "tcti": "swtpm:port=1",
                                               "pcrs": bad}}, tmp_path)
    with pytest.raises(ConfigError, match="needs a TPM"):
        parse_config({**base, "keystore": {"type": "file", "dir": "k", "pcr_binding": True}},
                     tmp_path)


# --- the daemon ----------------------------------------------------------------------------------


@pytest.fixture
def pcr_world(tmp_path_factory: pytest.TempPathFactory, swtpm: Swtpm,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], object]]:
    from tests.e2e.conftest import _build_world

    set_owner_auth(swtpm.tcti, OWNER)
    monkeypatch.setenv(_tpm.OWNER_AUTH_ENV, OWNER.decode())  # provisioning (enroll) has it
    with contextlib.ExitStack() as stack:
        def make() -> object:
            tmp = tmp_path_factory.mktemp("e2e-pcr")
            ks_dir = tmp / "device" / "keystore"
            return _build_world(tmp, None, stack, keystore=TpmKeystore(swtpm.tcti, ks_dir),
                                keystore_config={"keystore_type": "tpm", "tcti": swtpm.tcti,
                                                 "keystore_dir": ks_dir})
        yield make


@pytest.mark.slow
def test_daemon_reports_a_changed_boot_chain_keeps_its_model_and_resumes_after_reseal(
        pcr_world: Callable[[], object], swtpm: Swtpm, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from device_updater.cli import main
    from device_updater.state import Phase
    from device_updater.status import status
    from tests.e2e.conftest import MODEL, World
    from tests.e2e.test_device_e2e import _active_plaintext, _cycle_until
    from tests.e2e.test_device_tpm_e2e import _write_config

    world = pcr_world()
    assert isinstance(world, World)
    world.publish("1.0.0", world.models["1.0.0"])
    world.rollout("1.0.0")
    assert _cycle_until(world, "1.0.0", Phase.COMMITTED)["phase"] == "committed"
    exported = sorted(p.name for p in world.config.runtime_dir.iterdir())
    monkeypatch.delenv(_tpm.OWNER_AUTH_ENV)  # the daemon never has the owner authorisation

    extend_pcr(swtpm.tcti, 0)  # "reboot" into another firmware: PCR 0 differs
    world.publish("2.0.0", world.models["2.0.0"])
    world.rollout("2.0.0")
    agent = world.agent()
    agent.recover()  # deep recovery cannot decrypt: postponed, not a crash, nothing switched
    assert agent.last_error is not None and "another device state" in agent.last_error
    report = agent.run_cycle()  # the new assignment: downloaded, then paused at the install
    assert report.online
    assert any("sealed to another device state" in e for e in report.errors), report.errors
    st = agent.store(MODEL).load()
    assert st.version == "2.0.0" and not st.phase.terminal, st  # paused, not rejected
    slots = agent.slots(MODEL)
    active = slots.active()
    assert active is not None and active.version == "1.0.0"  # the daemon did not switch
    # the app's already exported model is left alone
    assert sorted(p.name for p in world.config.runtime_dir.iterdir()) == exported
    # status (no TPM access) shows it; current-model exits non-zero with the reason
    assert status(world.config)["sealed_state"]["state"] == "sealed_to_other_state"
    config_path = _write_config(world, tmp_path / "edge-updater.toml")
    capsys.readouterr()
    assert main(["--config", str(config_path), "status"]) == 0
    assert "SEALED TO ANOTHER DEVICE STATE" in capsys.readouterr().out
    assert main(["--config", str(config_path), "current-model", "--stream"]) == 1
    assert "sealed to another device state" in capsys.readouterr().err
    # reseal without the owner authorisation: refused
    assert main(["--config", str(config_path), "reseal"]) == 1
    assert "owner authorisation" in capsys.readouterr().err
    # the administrator re-seals after checking the new firmware
    monkeypatch.setenv(_tpm.OWNER_AUTH_ENV, OWNER.decode())
    assert main(["--config", str(config_path), "reseal", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pcrs"] == [0, 2, 4, 7]
    monkeypatch.delenv(_tpm.OWNER_AUTH_ENV)
    assert status(world.config)["sealed_state"] is None
    assert _active_plaintext(world) == world.models["1.0.0"]
    assert _cycle_until(world, "2.0.0", Phase.COMMITTED)["phase"] == "committed"
    assert _active_plaintext(world) == world.models["2.0.0"]
