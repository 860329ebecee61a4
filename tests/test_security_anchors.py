"""Security review: the token-held trust anchors (SoftHSM2).

``xfail(strict=True)`` = an open vulnerability demonstrated here; remove the marker once fixed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from device_updater.keystore import Pkcs11Keystore, TrustAnchors
from device_updater.tuf_client import (
    TrustAnchorMismatchError,
    install_trusted_root,
    load_anchored_root,
)
from edgepkg.keys import create_key, public_key_pem


def _release_pem(tmp_path: Path, name: str) -> bytes:
    return public_key_pem(create_key(name, "signing", directory=tmp_path / name).public_key)


def _root(version: int) -> bytes:
    md = Metadata(Root(version=version))
    return md.to_bytes()


def test_swapped_trusted_root_file_is_refused(tmp_path: Path) -> None:
    """Pinned property: the bootstrap root on disk must hash to the token-held anchor; a
    replaced file (even a valid root, even via a symlink) is refused."""
    anchor = install_trusted_root(tmp_path / "tuf", _root(1))
    assert load_anchored_root(tmp_path / "tuf", anchor) == _root(1)
    other = tmp_path / "other-root.json"
    other.write_bytes(_root(2))
    target = tmp_path / "tuf" / "trusted-root.json"
    target.unlink()
    target.symlink_to(other)
    with pytest.raises(TrustAnchorMismatchError):
        load_anchored_root(tmp_path / "tuf", anchor)


@pytest.mark.xfail(strict=True, reason=(
    "SECURITY: anyone holding the token USER PIN (which must sit on the device for the daemon) "
    "can replace the trust anchors: store_data_object() adds a higher 'generation' and "
    "read_data_object() takes the highest one, so a new root hash + attacker release key win. "
    "Fix: write-once anchors -- refuse provision() when anchors exist, read the LOWEST "
    "generation (or refuse >1 object), create with CKA_DESTROYABLE=false/CKA_MODIFIABLE=false, "
    "or keep them in a TPM NV index with WRITEDEFINE/WRITELOCKED."))
def test_trust_anchors_cannot_be_replaced_with_the_user_pin(softhsm_token, tmp_path: Path) -> None:
    ks = Pkcs11Keystore(softhsm_token.uri())
    ks.ensure_device_key()
    genuine = TrustAnchors(hashlib.sha256(b"genuine root").hexdigest(),
                           [_release_pem(tmp_path, "release")])
    ks.provision(genuine)

    # attacker with the user PIN only (no SO PIN), e.g. read from the daemon's pin-source
    evil = TrustAnchors(hashlib.sha256(b"attacker root").hexdigest(),
                        [_release_pem(tmp_path, "attacker")])
    with pytest.raises(Exception):  # noqa: B017 - any refusal is fine
        Pkcs11Keystore(softhsm_token.uri()).provision(evil)
    assert Pkcs11Keystore(softhsm_token.uri()).trust_anchors() == genuine
