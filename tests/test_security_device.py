"""Security review: device-side trust properties (slots at rest, requirement checks).

Tests marked ``xfail(strict=True)`` demonstrate an open vulnerability: they fail today and will
turn into an XPASS (a suite failure) once fixed, so the marker must then be removed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from device_updater.errors import SlotError
from device_updater.facts import unmet_requirements
from device_updater.slots import BundleSealer, ModelSummary, SlotStore
from edgepkg.crypto import public_key_id
from edgepkg.keys._software import FileRecipientKey


class _PublicOnlyKey:
    """What an attacker without the token has: the device's *public* key (it is sent to the
    server at enrollment and its key id is written in every sealed slot header)."""

    def __init__(self, pub: ec.EllipticCurvePublicKey) -> None:
        self._pub = pub
        self.key_id = public_key_id(pub)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._pub


def _summary(version: str, data: bytes) -> ModelSummary:
    return ModelSummary(name="det", version=version, sha256=hashlib.sha256(data).hexdigest(),
                        length=len(data), format="onnx")


def _device(tmp_path: Path) -> tuple[FileRecipientKey, SlotStore]:
    key = FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "test device key")
    return key, SlotStore(tmp_path / "slots", sealer=BundleSealer(key, chunk_size=4096))


def test_slot_meta_edit_of_a_genuine_slot_is_refused(tmp_path: Path) -> None:
    """Pinned property: relabelling a sealed slot (meta.json version/sha256) breaks the seal."""
    _, store = _device(tmp_path)
    good = b"genuine model v1" * 100
    store.write(_summary("1.0.0", good), [good], slot="a")
    meta_path = tmp_path / "slots" / "a" / "meta.json"
    meta = json.loads(meta_path.read_bytes())
    meta["summary"]["version"] = "9.0.0"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SlotError):
        store.switch_to("a")


@pytest.mark.xfail(strict=True, reason=(
    "SECURITY: slots are sealed to the device's PUBLIC key (HPKE) and meta.json carries no "
    "signature or token-held MAC, so anyone who can write the state dir can forge a complete "
    "slot holding an unsigned model; switch_to/export_plaintext accept it. Fix: keep the signed "
    "bundle manifest + signature block in the slot and re-verify it against the token-held "
    "release keys (and summary == manifest) in info()/switch_to()/export, or MAC meta+header "
    "with a key that only the token can use."))
def test_slot_forged_with_only_the_device_public_key_is_refused(tmp_path: Path) -> None:
    key, store = _device(tmp_path)
    good = b"genuine model v1" * 100
    store.write(_summary("1.0.0", good), [good], slot="a")
    store.switch_to("a")

    # attacker: no token, only the public key, writes slot b with a model nobody signed
    evil = b"attacker model, never signed by a release key" * 50
    attacker = SlotStore(tmp_path / "slots",
                         sealer=BundleSealer(_PublicOnlyKey(key.public_key()), chunk_size=4096))
    attacker.write(_summary("2.0.0", evil), [evil], slot="b")

    # device (real key) later switches (recovery / manual rollback / pointer flip) and exports
    with pytest.raises(SlotError):
        store.switch_to("b")
        out = store.export_plaintext("b", tmp_path / "run")
        assert out.read_bytes() != evil


def test_unknown_signed_requirement_is_not_silently_ignored() -> None:
    facts = {"platform": "linux-x86_64"}
    assert unmet_requirements({"tflite_runtime": "99.0.0"}, facts) != []
