"""Device keystore on a real SoftHSM2 token, and the development file keystore."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from device_updater.errors import KeystoreError
from device_updater.keystore import (
    AnchorsMissingError,
    BadAnchorsError,
    FileKeystore,
    Pkcs11Keystore,
    TrustAnchors,
    device_id,
    device_public_key_pem,
)
from edgepkg.keys import load_public_key, public_key_id, verify_signature


@pytest.fixture(scope="module")
def release_pem(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from edgepkg.keys import create_key, public_key_pem

    created = create_key("release", "signing", directory=tmp_path_factory.mktemp("keys"))
    return public_key_pem(created.public_key)


def test_token_device_key_signs_and_is_stable(softhsm_token, release_pem: bytes) -> None:
    ks = Pkcs11Keystore(softhsm_token.uri())
    pub = ks.ensure_device_key()
    assert ks.ensure_device_key() == pub  # not regenerated
    sig = ks.sign(b"hello")
    verify_signature(pub, sig, b"hello")
    assert device_id(ks) == public_key_id(pub)
    assert load_public_key(device_public_key_pem(ks).encode()) == pub
    # a fresh keystore object on the same token finds the same key
    assert device_id(Pkcs11Keystore(softhsm_token.uri())) == device_id(ks)


def test_token_recipient_key_does_ecdh_inside_token(softhsm_token) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    ks = Pkcs11Keystore(softhsm_token.uri())
    pub = ks.ensure_device_key()
    rk = ks.recipient_key()
    assert rk.software_private_key() is None  # never leaves the token
    peer = ec.generate_private_key(ec.SECP256R1())
    assert rk.exchange(peer.public_key()) == peer.exchange(ec.ECDH(), pub)


def test_trust_anchors_round_trip_through_token(softhsm_token, release_pem: bytes) -> None:
    ks = Pkcs11Keystore(softhsm_token.uri())
    ks.ensure_device_key()
    with pytest.raises(AnchorsMissingError, match="enroll"):
        ks.trust_anchors()
    anchors = TrustAnchors(hashlib.sha256(b"root").hexdigest(), [release_pem])
    ks.provision(anchors)
    got = Pkcs11Keystore(softhsm_token.uri()).trust_anchors()
    assert got == anchors
    assert got.key_ids() == [public_key_id(load_public_key(release_pem))]


def test_wrong_pin_is_a_keystore_error(softhsm_token) -> None:
    Pkcs11Keystore(softhsm_token.uri()).ensure_device_key()
    bad = softhsm_token.uri(pin_value="wrong-pin")
    with pytest.raises(KeystoreError):
        Pkcs11Keystore(bad).sign(b"x")


def test_malformed_anchors_are_refused(release_pem: bytes) -> None:
    with pytest.raises(BadAnchorsError):
        TrustAnchors("nothex", [release_pem])
    with pytest.raises(BadAnchorsError):
        TrustAnchors("a" * 64, [b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
    with pytest.raises(BadAnchorsError):
        TrustAnchors.from_bytes(b'{"version": 1, "root_sha256": 5}')


def test_file_keystore_warns_and_works(tmp_path: Path, release_pem: bytes,
                                       caplog: pytest.LogCaptureFixture) -> None:
    ks = FileKeystore(tmp_path / "ks")
    assert "development only" in caplog.text
    pub = ks.ensure_device_key()
    verify_signature(pub, ks.sign(b"m"), b"m")
    assert (tmp_path / "ks" / "device.key.pem").stat().st_mode & 0o077 == 0
    ks.provision(TrustAnchors("b" * 64, [release_pem]))
    assert FileKeystore(tmp_path / "ks").trust_anchors().root_sha256 == "b" * 64


def test_pkcs11_keystore_refuses_non_uri() -> None:
    with pytest.raises(KeystoreError):
        Pkcs11Keystore("/etc/passwd")


def test_file_keystore_anchors_are_write_once_like_the_token(tmp_path: Path,
                                                             release_pem: bytes) -> None:
    from device_updater.keystore import AnchorsAlreadyProvisionedError

    ks = FileKeystore(tmp_path / "ks")
    ks.provision(TrustAnchors("b" * 64, [release_pem]))
    ks.provision(TrustAnchors("b" * 64, [release_pem]))  # same anchors: a retried enrollment
    with pytest.raises(AnchorsAlreadyProvisionedError, match="enroll again"):
        ks.provision(TrustAnchors("c" * 64, [release_pem]))
    assert FileKeystore(tmp_path / "ks").trust_anchors().root_sha256 == "b" * 64
