"""The TPM keystore on a real TPM 2.0 emulator (swtpm): key, signatures, ECDH/HPKE, anchors."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from device_updater import _tpm
from device_updater.config import parse_config
from device_updater.errors import KeystoreError
from device_updater.keystore import (
    AnchorsAlreadyProvisionedError,
    AnchorsMissingError,
    AnchorsTamperedError,
    Keystore,
    TrustAnchors,
    device_id,
)
from device_updater.keystore_tpm import TpmKeystore
from device_updater.sealing import BundleSealer
from edgepkg import crypto
from edgepkg.bundle import unpack_bundle, write_bundle
from edgepkg.grants import grant_key_source, make_grant
from edgepkg.keys import public_key_pem
from edgepkg.keys._software import FileRecipientKey, FileSigner
from tests.fixtures.swtpm import Swtpm

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def ks(swtpm: Swtpm, tmp_path: Path) -> TpmKeystore:
    keystore = TpmKeystore(swtpm.tcti, tmp_path / "keystore")
    keystore.ensure_device_key()
    return keystore


def _anchors(n: int = 1) -> TrustAnchors:
    keys = [public_key_pem(ed25519.Ed25519PrivateKey.generate().public_key()) for _ in range(n)]
    return TrustAnchors(hashlib.sha256(b"root").hexdigest(), keys)


def test_tpm_keystore_implements_the_keystore_interface(ks: TpmKeystore) -> None:
    assert isinstance(ks, Keystore)


def test_device_key_is_made_in_the_tpm_and_cannot_be_exported(swtpm: Swtpm,
                                                              ks: TpmKeystore) -> None:
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CC, TPM2_SE, TPMA_OBJECT
    from tpm2_pytss.TSS2_Exception import TSS2_Exception
    from tpm2_pytss.types import TPM2B_DATA, TPMT_SYM_DEF, TPMT_SYM_DEF_OBJECT

    with _tpm.tpm_session(swtpm.tcti, "test") as ctx:
        key = _tpm.persistent(ctx, ks.key_handle)
        attrs = _tpm.object_attributes(ctx, key)
        # generated inside, bound to this TPM and its parent: no TPM command reveals or moves it
        for bit in (TPMA_OBJECT.FIXEDTPM, TPMA_OBJECT.FIXEDPARENT,
                    TPMA_OBJECT.SENSITIVEDATAORIGIN):
            assert attrs & bit, bit
        # TPM2_Duplicate (the only export path for a loaded object) is refused
        session = ctx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                         TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
        ctx.policy_command_code(session, TPM2_CC.Duplicate)
        with pytest.raises(TSS2_Exception):
            ctx.duplicate(key, ESYS_TR.RH_NULL, TPM2B_DATA(),
                          TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL), session1=session)
        # read_public hands out the public area only
        pub, _name, _qname = ctx.read_public(key)
        assert bytes(pub.to_pem()) == public_key_pem(ks.device_public_key())


def test_device_key_is_persistent_and_stable(swtpm: Swtpm, ks: TpmKeystore,
                                             tmp_path: Path) -> None:
    first = device_id(ks)
    assert device_id(TpmKeystore(swtpm.tcti, tmp_path / "other")) == first
    assert public_key_pem(ks.ensure_device_key()) == public_key_pem(ks.device_public_key())
    swtpm.kill()  # power cut: the persistent handle lives in the TPM's NV
    swtpm.start()
    assert device_id(TpmKeystore(swtpm.tcti, tmp_path / "k")) == first


def test_sign_verifies_with_the_device_public_key(ks: TpmKeystore) -> None:
    for data in (b"", b"POST /api/v1/devices/checkin", os.urandom(5000)):
        sig = ks.sign(data)
        ks.device_public_key().verify(sig, data, ec.ECDSA(hashes.SHA256()))
        crypto.verify_signature(ks.device_public_key(), sig, data)


def test_ecdh_in_the_tpm_matches_software_ecdh(ks: TpmKeystore) -> None:
    rk = ks.recipient_key()
    assert rk.software_private_key() is None
    assert rk.key_id == device_id(ks)
    for _ in range(5):
        eph = ec.generate_private_key(ec.SECP256R1())
        assert rk.exchange(eph.public_key()) == eph.exchange(ec.ECDH(), ks.device_public_key())


def test_ecdh_refuses_a_peer_on_another_curve(ks: TpmKeystore) -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(KeystoreError, match="P-256"):
        ks.recipient_key().exchange(other)


def test_hpke_receiver_opens_what_cryptography_hpke_sealed(ks: TpmKeystore) -> None:
    data_key = crypto.new_data_key()
    wrapped = crypto.wrap_data_key(data_key, ks.device_public_key(), b"info")
    assert crypto.unwrap_data_key(wrapped, ks.recipient_key(), b"info") == data_key


def test_bundle_addressed_to_the_tpm_key_unpacks(ks: TpmKeystore, tmp_path: Path) -> None:
    signer = FileSigner(ed25519.Ed25519PrivateKey.generate(), "release")
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(30_000))
    bundle = tmp_path / "m.edgepkg"
    write_bundle(model, bundle, manifest_fields={"name": "det", "version": "1.0.0",
                                                 "format": "raw"},
                 signer=signer, recipients=[ks.device_public_key()], chunk_size=4096)
    out = tmp_path / "out.bin"
    unpack_bundle(bundle, out, keys=[ks.recipient_key()], trusted_keys=[signer.public_key()])
    assert out.read_bytes() == model.read_bytes()


def test_key_grant_opens_with_the_tpm_key(ks: TpmKeystore, tmp_path: Path) -> None:
    signer = FileSigner(ed25519.Ed25519PrivateKey.generate(), "release")
    service = FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "key-service")
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(20_000))
    bundle = tmp_path / "m.edgepkg"
    write_bundle(model, bundle, manifest_fields={"name": "det", "version": "2.0.0",
                                                 "format": "raw"},
                 signer=signer, recipients=[service.public_key()], chunk_size=4096)
    did = device_id(ks)
    grant = make_grant(bundle, service, ks.device_public_key(), did,
                       NOW + dt.timedelta(days=1), NOW)
    out = tmp_path / "out.bin"
    unpack_bundle(bundle, out, trusted_keys=[signer.public_key()],
                  data_key_source=grant_key_source(grant, ks.recipient_key(), device_id=did,
                                                   now=NOW))
    assert out.read_bytes() == model.read_bytes()


def test_slots_seal_and_unseal_through_the_tpm_key(ks: TpmKeystore) -> None:
    sealer = BundleSealer(ks.recipient_key(), chunk_size=4096)
    out = io.BytesIO()
    w = sealer.seal(out, b"binding")
    w.write(b"m" * 10_000)
    w.close()
    assert b"".join(sealer.unseal(io.BytesIO(out.getvalue()), b"binding")) == b"m" * 10_000


def test_anchors_round_trip_and_are_write_once(ks: TpmKeystore) -> None:
    with pytest.raises(AnchorsMissingError):
        ks.trust_anchors()
    anchors = _anchors(2)
    ks.provision(anchors)
    ks.provision(anchors)  # a retried enrollment: no-op
    assert ks.trust_anchors() == anchors
    with pytest.raises(AnchorsAlreadyProvisionedError, match="tpm2_nvundefine"):
        ks.provision(_anchors())
    assert ks.trust_anchors() == anchors


def test_anchors_nv_index_cannot_be_rewritten_even_with_owner_auth(swtpm: Swtpm,
                                                                    ks: TpmKeystore) -> None:
    from tpm2_pytss.constants import ESYS_TR, TPM2_RC
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    ks.provision(_anchors())
    with _tpm.tpm_session(swtpm.tcti, "test") as ctx:
        nv = _tpm.nv_handle(ctx, ks.nv_index)
        _size, written, locked, writedefine = _tpm.nv_state(ctx, nv)
        assert written and locked and writedefine
        with pytest.raises(TSS2_Exception) as exc:
            ctx.nv_write(nv, b"\0" * 32, 0, auth_handle=ESYS_TR.OWNER)
        assert _tpm.is_rc(exc.value, TPM2_RC.NV_LOCKED)
    swtpm.kill()  # the write lock is not cleared by a reset (TPMA_NV_WRITEDEFINE)
    swtpm.start()
    with _tpm.tpm_session(swtpm.tcti, "test") as ctx:
        nv = _tpm.nv_handle(ctx, ks.nv_index)
        with pytest.raises(TSS2_Exception):
            ctx.nv_write(nv, b"\0" * 32, 0, auth_handle=ESYS_TR.OWNER)


def test_anchors_cannot_be_undefined_without_the_owner_auth(swtpm: Swtpm,
                                                            tmp_path: Path) -> None:
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    with _tpm.tpm_session(swtpm.tcti, "test") as ctx:  # the factory sets an owner password
        ctx.hierarchy_change_auth(ESYS_TR.OWNER, b"factory-owner")
    with pytest.raises(KeystoreError, match="EDGE_UPDATER_TPM_OWNER_AUTH"):
        TpmKeystore(swtpm.tcti, tmp_path / "k").ensure_device_key()
    ks = TpmKeystore(swtpm.tcti, tmp_path / "k", owner_auth=b"factory-owner")
    ks.ensure_device_key()
    ks.provision(_anchors())
    with _tpm.tpm_session(swtpm.tcti, "test") as ctx:  # the device, without the owner auth
        nv = _tpm.nv_handle(ctx, ks.nv_index)
        with pytest.raises(TSS2_Exception):
            ctx.nv_undefine_space(nv, ESYS_TR.OWNER)
    # the daemon needs no owner auth to read them
    assert TpmKeystore(swtpm.tcti, tmp_path / "k").trust_anchors().root_sha256


def test_a_changed_anchors_file_is_tampering(ks: TpmKeystore) -> None:
    ks.provision(_anchors())
    path = ks.dir / "anchors.json"
    other = _anchors()
    path.write_bytes(other.to_bytes())  # a valid document, but not the one the TPM locked
    with pytest.raises(AnchorsTamperedError, match="does not match"):
        ks.trust_anchors()


def test_a_lost_anchors_file_is_restored_by_enrolling_again(ks: TpmKeystore) -> None:
    anchors = _anchors()
    ks.provision(anchors)
    (ks.dir / "anchors.json").unlink()
    with pytest.raises(AnchorsMissingError, match="enroll again"):
        ks.trust_anchors()
    with pytest.raises(AnchorsAlreadyProvisionedError):
        ks.provision(_anchors())
    ks.provision(anchors)
    assert ks.trust_anchors() == anchors


def test_unreachable_tpm_is_a_keystore_error(tmp_path: Path) -> None:
    pytest.importorskip("tpm2_pytss")
    ks = TpmKeystore("swtpm:host=127.0.0.1,port=1", tmp_path)
    with pytest.raises(KeystoreError, match="cannot reach the TPM"):
        ks.device_public_key()


@pytest.mark.parametrize("tcti", ["", ":x", "no spaces:x"])
def test_malformed_tcti_is_refused(tcti: str, tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="TCTI"):
        TpmKeystore(tcti, tmp_path)


def test_config_selects_the_tpm_keystore(swtpm: Swtpm, tmp_path: Path) -> None:
    from device_updater.cli import make_keystore

    cfg = parse_config({
        "server": {"url": "http://127.0.0.1:1"},
        "device": {"state_dir": "state"},
        "keystore": {"type": "tpm", "tcti": swtpm.tcti, "key_handle": 0x81000E02,
                     "nv_index": 0x01000E17},
    }, tmp_path)
    ks = make_keystore(cfg)
    assert isinstance(ks, TpmKeystore)
    assert (ks.key_handle, ks.nv_index, ks.dir) == (0x81000E02, 0x01000E17,
                                                    tmp_path / "state" / "keystore")
    ks.ensure_device_key()
    with pytest.raises(Exception, match=r"keystore\.tcti"):
        parse_config({"server": {"url": "http://x"}, "device": {"state_dir": "s"},
                      "keystore": {"type": "tpm"}}, tmp_path)


def test_example_config_selects_the_tpm_keystore_the_tests_run() -> None:
    from device_updater.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "device_updater" / "data"
                      / "example-config.toml")
    assert (cfg.keystore_type, cfg.tcti) == ("tpm", "device:/dev/tpmrm0")
    ks = TpmKeystore(cfg.tcti or "", cfg.keystore_dir or Path("/nonexistent"))
    assert (ks.key_handle, ks.nv_index) == (_tpm.DEFAULT_KEY_HANDLE, _tpm.DEFAULT_NV_INDEX)
