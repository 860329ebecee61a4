"""Format 2: the signed commitment lets `verify` catch any cut or changed byte without keys."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edgepkg import errors
from edgepkg.bundle import BundleReader, check_bundle, verify_bundle, write_bundle
from edgepkg.bundle._container import FORMAT_VERSION
from edgepkg.cli import main
from edgepkg.keys._software import FileRecipientKey, FileSigner, public_key_pem

CHUNK = 1024


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[FileSigner, FileRecipientKey]:
    return (FileSigner(ed25519.Ed25519PrivateKey.generate(), "signer"),
            FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "recipient"))


def _bundle(tmp_path: Path, keys, size: int = 2500, name: str = "m.edgepkg") -> Path:
    signer, recipient = keys
    payload = tmp_path / f"{name}.bin"
    payload.write_bytes(os.urandom(size))  # incompressible: several chunks
    out = tmp_path / name
    write_bundle(payload, out, manifest_fields={"name": "det", "version": "1.0.0", "format": "raw"},
                 signer=signer, recipients=[recipient.public_key()], chunk_size=CHUNK)
    return out


def test_intact_bundle_checks_without_keys_and_with_them(tmp_path, keys):
    bundle = _bundle(tmp_path, keys)
    info = check_bundle(bundle)
    assert info.format_version == FORMAT_VERSION == 2
    assert info.size == bundle.stat().st_size and len(info.payload_sha256) == 64
    verify_bundle(bundle, [keys[0].public_key()])


def test_every_truncation_fails_keyless_check(tmp_path, keys):
    bundle = _bundle(tmp_path, keys)
    data = bundle.read_bytes()
    cut = tmp_path / "cut.edgepkg"
    for size in range(len(data)):
        cut.write_bytes(data[:size])
        with pytest.raises(errors.BundleError):
            check_bundle(cut)


def test_every_flipped_byte_fails_keyless_check(tmp_path, keys):
    bundle = _bundle(tmp_path, keys)
    data = bundle.read_bytes()
    bad = tmp_path / "bad.edgepkg"
    for offset in range(len(data)):
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        bad.write_bytes(bytes(flipped))
        with pytest.raises(errors.UntrustedInputError):
            check_bundle(bad)


def test_cli_verify_without_keys_refuses_cut_and_corrupt_files_in_one_line(tmp_path, keys, capsys):
    bundle = _bundle(tmp_path, keys, size=3000)
    data = bundle.read_bytes()
    assert main(["verify", str(bundle)]) == 0
    assert "whole file intact" in capsys.readouterr().out
    bad = tmp_path / "bad.edgepkg"
    cases = [data[:2000], data[:-1], data[: len(data) // 2]]
    for offset in (5, 30, len(data) // 3, len(data) // 2, len(data) - 40, len(data) - 1):
        flipped = bytearray(data)
        flipped[offset] ^= 0x80
        cases.append(bytes(flipped))
    for case in cases:
        bad.write_bytes(case)
        assert main(["verify", str(bad)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("edgepkg: error: ") and err.count("\n") == 1, err


def test_cli_verify_with_trusted_key(tmp_path, keys, capsys):
    bundle = _bundle(tmp_path, keys)
    pub = tmp_path / "release.pub.pem"
    pub.write_bytes(public_key_pem(keys[0].public_key()))
    assert main(["verify", str(bundle), "--trusted-key", str(pub), "--json"]) == 0
    assert '"signature_checked": true' in capsys.readouterr().out
    other = tmp_path / "other.pub.pem"
    other.write_bytes(public_key_pem(ed25519.Ed25519PrivateKey.generate().public_key()))
    assert main(["verify", str(bundle), "--trusted-key", str(other)]) == 1


def test_reassembled_file_with_recomputed_digests_fails_the_signature(tmp_path, keys):
    # Someone who rewrites the payload and recomputes every digest passes the keyless check
    # only: the commitment signature (release key) refuses it.
    from edgepkg.bundle._container import Commitment, read_commitment, read_header

    bundle = _bundle(tmp_path, keys)
    data = bytearray(bundle.read_bytes())
    with open(bundle, "rb") as fh:
        header = read_header(fh)
        commitment, _ = read_commitment(fh, header)
    start = header.payload_offset
    data[start + 10] ^= 0x01
    payload = bytes(data[start:start + header.payload_length])
    forged = Commitment(commitment.header_sha256, header.payload_length,
                        hashlib.sha256(payload).hexdigest(), commitment.signature)
    out = bytes(data[:start + header.payload_length]) + forged.to_trailer()
    bundle.write_bytes(out)
    check_bundle(bundle)  # digests are consistent again...
    with pytest.raises(errors.BadSignatureError):
        verify_bundle(bundle, [keys[0].public_key()])  # ...but not signed
    with pytest.raises(errors.BadSignatureError):
        BundleReader(bundle, keys=[keys[1]], trusted_keys=[keys[0].public_key()])


def test_reader_refuses_corrupt_payload_before_releasing_its_last_chunk(tmp_path, keys):
    bundle = _bundle(tmp_path, keys, size=8 * CHUNK)
    data = bytearray(bundle.read_bytes())
    info = check_bundle(bundle)
    # Corrupt the last ciphertext chunk: earlier chunks are fine, the commitment check fires
    # when the last byte is read, before the chunk that precedes it is even yielded.
    data[info.payload_offset + info.payload_length - 3] ^= 0x01
    bundle.write_bytes(bytes(data))
    reader = BundleReader(bundle, keys=[keys[1]], trusted_keys=[keys[0].public_key()])
    got = 0
    with pytest.raises(errors.TamperedError, match="committed SHA-256"):
        for block in reader.blocks():
            got += len(block)
    assert got < reader.manifest.plaintext_length


def test_truncated_bundle_fails_reader_before_any_plaintext(tmp_path, keys):
    bundle = _bundle(tmp_path, keys)
    bundle.write_bytes(bundle.read_bytes()[:2000])
    with pytest.raises(errors.TruncatedError):
        BundleReader(bundle, keys=[keys[1]], trusted_keys=[keys[0].public_key()])


def test_format_1_is_refused_with_a_repackage_hint(tmp_path, keys):
    bundle = _bundle(tmp_path, keys)
    data = bytearray(bundle.read_bytes())
    data[8:10] = (1).to_bytes(2, "big")
    bundle.write_bytes(bytes(data))
    with pytest.raises(errors.UnsupportedVersionError, match="repackage"):
        check_bundle(bundle)
