"""TUF metadata signed through the securesystemslib adapter verifies with python-tuf."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import Signer as SSlibSignerBase
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Targets

from edgepkg.errors import KeyError_
from edgepkg.keys import create_key, load_signer, public_key_id
from edgepkg.keys.tuf import TufSigner, register_uri_scheme, sslib_public_key
from tests.fixtures.softhsm import SoftHSMToken


def _signed_pair(root_signer: TufSigner, targets_signer: TufSigner) -> tuple[Metadata, Metadata]:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    root = Root(expires=expires)
    root.add_key(root_signer.public_key, "root")
    root.add_key(targets_signer.public_key, "targets")
    root_md = Metadata(root)
    root_md.sign(root_signer)
    targets_md = Metadata(Targets(expires=expires))
    targets_md.sign(targets_signer)
    return root_md, targets_md


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_tuf_metadata_signed_with_file_keys_verifies(tmp_path: Path, algorithm: str) -> None:
    root_key = create_key("root", "signing", directory=tmp_path, algorithm=algorithm)
    targets_key = create_key("targets", "signing", directory=tmp_path, algorithm=algorithm)
    root_signer = TufSigner(load_signer(root_key.private_ref))
    targets_signer = TufSigner(load_signer(targets_key.private_ref))
    assert root_signer.public_key.keyid == root_key.key_id  # edgepkg key id == TUF keyid
    assert root_signer.public_key.scheme == (
        "ed25519" if algorithm == "ed25519" else "ecdsa-sha2-nistp256"
    )
    root_md, targets_md = _signed_pair(root_signer, targets_signer)
    root_md.verify_delegate(Root.type, root_md)
    root_md.verify_delegate(Targets.type, targets_md)
    # a round trip through JSON verifies too
    reparsed = Metadata.from_bytes(root_md.to_bytes())
    reparsed.verify_delegate(Targets.type, Metadata.from_bytes(targets_md.to_bytes()))


def test_tuf_metadata_signed_in_softhsm_verifies(
    softhsm_token: SoftHSMToken, tmp_path: Path
) -> None:
    root_key = create_key("root", "signing", directory=tmp_path, pkcs11_uri=softhsm_token.uri())
    targets_key = create_key(
        "targets", "signing", directory=tmp_path, pkcs11_uri=softhsm_token.uri()
    )
    root_signer = TufSigner(load_signer(root_key.private_ref, pin=softhsm_token.pin))
    targets_signer = TufSigner(load_signer(targets_key.private_ref, pin=softhsm_token.pin))
    root_md, targets_md = _signed_pair(root_signer, targets_signer)
    root_md.verify_delegate(Root.type, root_md)
    root_md.verify_delegate(Targets.type, targets_md)
    key = root_md.signed.get_key(targets_signer.public_key.keyid)
    sig = targets_md.signatures[key.keyid]
    key.verify_signature(sig, targets_md.signed_bytes)
    with pytest.raises(UnverifiedSignatureError):
        key.verify_signature(sig, targets_md.signed_bytes + b" ")


def test_tuf_refuses_metadata_signed_by_another_key(tmp_path: Path) -> None:
    a = TufSigner(load_signer(create_key("a", "signing", directory=tmp_path).private_ref))
    b = TufSigner(load_signer(create_key("b", "signing", directory=tmp_path).private_ref))
    root_md, _ = _signed_pair(a, a)
    impostor = Metadata(Targets(expires=datetime.now(UTC) + timedelta(days=1)))
    impostor.sign(b)
    with pytest.raises(UnsignedMetadataError):
        root_md.verify_delegate(Targets.type, impostor)


def test_adapter_refuses_mismatched_public_key(tmp_path: Path) -> None:
    a = load_signer(create_key("a", "signing", directory=tmp_path).private_ref)
    b = load_signer(create_key("b", "signing", directory=tmp_path).private_ref)
    with pytest.raises(KeyError_, match="does not match"):
        TufSigner(a, sslib_public_key(b.public_key()))


def test_from_priv_key_uri_routes_edgepkg_scheme(tmp_path: Path) -> None:
    created = create_key("t", "signing", directory=tmp_path, algorithm="ecdsa-p256")
    register_uri_scheme()
    pub = sslib_public_key(created.public_key)
    signer = SSlibSignerBase.from_priv_key_uri(f"edgepkg:{created.private_ref}", pub)
    assert isinstance(signer, TufSigner)
    sig = signer.sign(b"payload")
    pub.verify_signature(sig, b"payload")
    assert pub.keyid == public_key_id(created.public_key)
