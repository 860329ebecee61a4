"""Bundle format: round trips, and every tamper/truncation case fails typed with no output."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edgepkg import errors
from edgepkg.bundle import (
    Manifest,
    open_plaintext,
    parse_version,
    read_bundle_info,
    unpack_bundle,
    verify_bundle,
    write_bundle,
)
from edgepkg.bundle._container import read_header
from edgepkg.crypto import TAG_BYTES, unwrap_data_key, wrap_data_key
from edgepkg.keys._software import FileRecipientKey, FileSigner

CHUNK = 4096


class TokenLikeRecipient:
    """A recipient whose private key is not available to software: only ECDH is offered.

    It forces the HPKE decapsulation path used for PKCS#11 keys (ECDH through ``exchange``).
    """

    def __init__(self, inner: FileRecipientKey) -> None:
        self._inner = inner
        self.key_id = inner.key_id

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._inner.public_key()

    def exchange(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        return self._inner.exchange(peer)

    def software_private_key(self) -> None:
        return None


@pytest.fixture()
def signer() -> FileSigner:
    return FileSigner(ed25519.Ed25519PrivateKey.generate(), "test-signer")


@pytest.fixture()
def recipient() -> FileRecipientKey:
    return FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "test-recipient")


@pytest.fixture()
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    # Incompressible so the payload spans many chunks.
    path.write_bytes(os.urandom(CHUNK * 10 + 123))
    return path


def _fields(version: str = "1.0.0") -> dict:
    return {"name": "detector", "version": version, "format": "raw",
            "policy": {"metric": "top1_accuracy", "min": 0.9}}


def _write(payload: Path, out: Path, signer, recipients, version: str = "1.0.0") -> Manifest:
    return write_bundle(payload, out, manifest_fields=_fields(version), signer=signer,
                        recipients=[r.public_key() for r in recipients], chunk_size=CHUNK)


def _assert_fails(bundle: Path, out: Path, recipient, signer, exc_type) -> None:
    with pytest.raises(exc_type):
        unpack_bundle(bundle, out, keys=[recipient], trusted_keys=[signer.public_key()])
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_trip_restores_exact_bytes(tmp_path, payload, signer, recipient):
    bundle = tmp_path / "m.edgepkg"
    manifest = _write(payload, bundle, signer, [recipient])
    out = tmp_path / "out.bin"
    got = unpack_bundle(bundle, out, keys=[recipient], trusted_keys=[signer.public_key()])
    assert out.read_bytes() == payload.read_bytes()
    assert got == manifest
    assert manifest.plaintext_sha256 == hashlib.sha256(payload.read_bytes()).hexdigest()
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_empty_payload_round_trips(tmp_path, signer, recipient):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    bundle = tmp_path / "e.edgepkg"
    _write(empty, bundle, signer, [recipient])
    out = tmp_path / "out.bin"
    unpack_bundle(bundle, out, keys=[recipient], trusted_keys=[signer.public_key()])
    assert out.read_bytes() == b""


def test_ecdsa_signer_and_several_recipients(tmp_path, payload, recipient):
    ecdsa = FileSigner(ec.generate_private_key(ec.SECP256R1()), "ecdsa")
    other = FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "other")
    bundle = tmp_path / "m.edgepkg"
    _write(payload, bundle, ecdsa, [recipient, other])
    for key in (recipient, other):
        data = b"".join(open_plaintext(bundle, keys=[key], trusted_keys=[ecdsa.public_key()]))
        assert data == payload.read_bytes()


def test_token_style_decapsulation_matches_library_hpke(tmp_path, payload, signer, recipient):
    # Same wrapped key, opened by cryptography's hpke.Suite and by the ECDH-through-exchange path.
    data_key = os.urandom(32)
    wrapped = wrap_data_key(data_key, recipient.public_key(), b"info")
    assert unwrap_data_key(wrapped, recipient, b"info") == data_key
    assert unwrap_data_key(wrapped, TokenLikeRecipient(recipient), b"info") == data_key
    with pytest.raises(errors.NotARecipientError):
        unwrap_data_key(wrapped, TokenLikeRecipient(recipient), b"other info")
    bundle = tmp_path / "m.edgepkg"
    _write(payload, bundle, signer, [recipient])
    out = tmp_path / "out.bin"
    unpack_bundle(bundle, out, keys=[TokenLikeRecipient(recipient)],
                  trusted_keys=[signer.public_key()])
    assert out.read_bytes() == payload.read_bytes()


def test_inspect_needs_no_key(tmp_path, payload, signer, recipient):
    bundle = tmp_path / "m.edgepkg"
    _write(payload, bundle, signer, [recipient])
    info = read_bundle_info(bundle)
    assert info.manifest.name == "detector"
    assert info.signer_key_id == signer.key_id
    assert info.recipient_key_ids == [recipient.key_id]
    assert info.manifest.summary()["kind"] == "full"


def test_wrong_recipient_is_refused(tmp_path, payload, signer, recipient):
    bundle = tmp_path / "m.edgepkg"
    _write(payload, bundle, signer, [recipient])
    stranger = FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "stranger")
    _assert_fails(bundle, tmp_path / "out.bin", stranger, signer, errors.NotARecipientError)


def test_untrusted_signer_is_refused(tmp_path, payload, signer, recipient):
    bundle = tmp_path / "m.edgepkg"
    _write(payload, bundle, signer, [recipient])
    other = FileSigner(ed25519.Ed25519PrivateKey.generate(), "other")
    with pytest.raises(errors.UnknownSignerError):
        verify_bundle(bundle, [other.public_key()])
    _assert_fails(bundle, tmp_path / "out.bin", recipient, other, errors.UnknownSignerError)


def test_manifest_kept_apart_is_reverified(tmp_path, payload, signer, recipient):
    from edgepkg.bundle import verify_signed_manifest

    bundle = tmp_path / "m.edgepkg"
    manifest = _write(payload, bundle, signer, [recipient])
    info = verify_bundle(bundle, [signer.public_key()])
    assert verify_signed_manifest(info.manifest_bytes, info.signature_block,
                                  [signer.public_key()]) == manifest
    forged = info.manifest_bytes.replace(b'"1.0.0"', b'"9.0.0"')
    with pytest.raises(errors.BadSignatureError):
        verify_signed_manifest(forged, info.signature_block, [signer.public_key()])
    other = FileSigner(ed25519.Ed25519PrivateKey.generate(), "other")
    with pytest.raises(errors.UnknownSignerError):
        verify_signed_manifest(info.manifest_bytes, info.signature_block, [other.public_key()])


def test_not_a_bundle(tmp_path, payload, signer, recipient):
    _assert_fails(payload, tmp_path / "out.bin", recipient, signer, errors.NotABundleError)


@pytest.mark.parametrize(
    ("offset_name", "exc"),
    [
        ("magic", errors.NotABundleError),
        ("version", errors.UnsupportedVersionError),
        ("flags", errors.UnsupportedVersionError),
        ("payload_length", errors.BundleError),
        ("manifest_length", errors.UntrustedInputError),
        ("manifest", errors.BundleError),
        ("signature", errors.BundleError),
        ("recipient_id", errors.BundleError),
        ("wrapped_key", errors.NotARecipientError),
    ],
)
def test_flipped_header_byte_is_refused(tmp_path, payload, signer, recipient, offset_name, exc):
    bundle = tmp_path / "m.edgepkg"
    _write(payload, bundle, signer, [recipient])
    with open(bundle, "rb") as fh:
        header = read_header(fh)
    m_end = 24 + len(header.manifest_bytes)
    sig_len = header.payload_offset - m_end - 2 - 2 - (32 + 2 + 113)
    offsets = {
        "magic": 1,
        "version": 9,
        "flags": 11,
        "payload_length": 19,
        "manifest_length": 22,
        "manifest": 24 + len(header.manifest_bytes) // 2,
        "signature": m_end + 2 + sig_len - 10,
        "recipient_id": m_end + 2 + sig_len + 2 + 5,
        "wrapped_key": m_end + 2 + sig_len + 2 + 32 + 2 + 70,
    }
    _flip(bundle, offsets[offset_name])
    _assert_fails(bundle, tmp_path / "out.bin", recipient, signer, exc)


def test_each_flipped_chunk_is_refused(tmp_path, payload, signer, recipient):
    bundle = tmp_path / "m.edgepkg"
    _write(payload, bundle, signer, [recipient])
    info = read_bundle_info(bundle)
    original = bundle.read_bytes()
    n_chunks = -(-info.payload_length // (CHUNK + TAG_BYTES))
    assert n_chunks >= 10
    for i in range(n_chunks):
        bundle.write_bytes(original)
        _flip(bundle, info.payload_offset + i * (CHUNK + TAG_BYTES) + 7)
        _assert_fails(bundle, tmp_path / "out.bin", recipient, signer, errors.TamperedError)


@pytest.mark.parametrize("where", ["at_boundary", "inside_chunk", "inside_header", "last_byte"])
def test_truncated_bundle_is_refused(tmp_path, payload, signer, recipient, where):
    bundle = tmp_path / "m.edgepkg"
    _write(payload, bundle, signer, [recipient])
    info = read_bundle_info(bundle)
    cut = {
        "at_boundary": info.payload_offset + 3 * (CHUNK + TAG_BYTES),
        "inside_chunk": info.payload_offset + 3 * (CHUNK + TAG_BYTES) + 100,
        "inside_header": 30,
        "last_byte": info.size - 1,
    }[where]
    bundle.write_bytes(bundle.read_bytes()[:cut])
    _assert_fails(bundle, tmp_path / "out.bin", recipient, signer, errors.TruncatedError)


def test_truncated_at_boundary_with_forged_length_is_still_refused(tmp_path, payload, signer,
                                                                    recipient):
    # An attacker who cuts whole chunks and fixes the header length still fails: the last
    # remaining chunk was not sealed as the last one.
    bundle = tmp_path / "m.edgepkg"
    _write(payload, bundle, signer, [recipient])
    info = read_bundle_info(bundle)
    keep = 3 * (CHUNK + TAG_BYTES)
    data = bytearray(bundle.read_bytes()[: info.payload_offset + keep])
    data[12:20] = keep.to_bytes(8, "big")
    bundle.write_bytes(bytes(data))
    _assert_fails(bundle, tmp_path / "out.bin", recipient, signer, errors.TruncatedError)


def test_swapped_and_reordered_chunks_are_refused(tmp_path, payload, signer, recipient):
    a, b = tmp_path / "a.edgepkg", tmp_path / "b.edgepkg"
    _write(payload, a, signer, [recipient])
    _write(payload, b, signer, [recipient], version="1.0.1")
    ia, ib = read_bundle_info(a), read_bundle_info(b)
    step = CHUNK + TAG_BYTES
    da, db = bytearray(a.read_bytes()), b.read_bytes()
    # Chunk 2 of bundle b spliced into bundle a (same key holder, other bundle).
    da[ia.payload_offset + 2 * step: ia.payload_offset + 3 * step] = db[
        ib.payload_offset + 2 * step: ib.payload_offset + 3 * step]
    spliced = tmp_path / "spliced.edgepkg"
    spliced.write_bytes(bytes(da))
    _assert_fails(spliced, tmp_path / "out.bin", recipient, signer, errors.TamperedError)
    # Chunks 1 and 2 of the same bundle swapped.
    da = bytearray(a.read_bytes())
    c1 = da[ia.payload_offset + step: ia.payload_offset + 2 * step]
    c2 = da[ia.payload_offset + 2 * step: ia.payload_offset + 3 * step]
    da[ia.payload_offset + step: ia.payload_offset + 3 * step] = c2 + c1
    swapped = tmp_path / "swapped.edgepkg"
    swapped.write_bytes(bytes(da))
    _assert_fails(swapped, tmp_path / "out.bin", recipient, signer, errors.TamperedError)


def test_wrapped_key_from_other_bundle_is_refused(tmp_path, payload, signer, recipient):
    a, b = tmp_path / "a.edgepkg", tmp_path / "b.edgepkg"
    _write(payload, a, signer, [recipient])
    _write(payload, b, signer, [recipient], version="1.0.1")
    with open(a, "rb") as fa, open(b, "rb") as fb:
        ha, hb = read_header(fa), read_header(fb)
    data = a.read_bytes().replace(ha.wrapped_keys[recipient.key_id],
                                  hb.wrapped_keys[recipient.key_id])
    a.write_bytes(data)
    _assert_fails(a, tmp_path / "out.bin", recipient, signer, errors.NotARecipientError)


def test_trailing_data_is_refused(tmp_path, payload, signer, recipient):
    bundle = tmp_path / "m.edgepkg"
    _write(payload, bundle, signer, [recipient])
    with open(bundle, "ab") as fh:
        fh.write(b"extra")
    _assert_fails(bundle, tmp_path / "out.bin", recipient, signer, errors.TamperedError)


def test_failed_unpack_keeps_existing_output(tmp_path, payload, signer, recipient):
    bundle = tmp_path / "m.edgepkg"
    _write(payload, bundle, signer, [recipient])
    _flip(bundle, read_bundle_info(bundle).payload_offset + 5)
    out = tmp_path / "current.bin"
    out.write_bytes(b"the model in use")
    with pytest.raises(errors.TamperedError):
        unpack_bundle(bundle, out, keys=[recipient], trusted_keys=[signer.public_key()])
    assert out.read_bytes() == b"the model in use"


def test_semantic_version_ordering():
    ordered = ["0.9.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0-rc.1", "1.0.0",
               "1.0.1", "1.10.0", "2.0.0"]
    assert sorted(ordered, key=parse_version) == ordered
    with pytest.raises(errors.UsageError):
        parse_version("1.0")
