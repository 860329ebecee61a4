"""Security review: device-side trust properties (slots at rest, requirement checks).

Tests marked ``xfail(strict=True)`` demonstrate an open vulnerability: they fail today and will
turn into an XPASS (a suite failure) once fixed, so the marker must then be removed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from device_updater.errors import SlotError
from device_updater.facts import unmet_requirements
from device_updater.slots import BundleSealer, ModelSummary, ReleaseEvidence, SlotStore
from edgepkg.bundle import read_bundle_info, write_bundle
from edgepkg.crypto import public_key_id
from edgepkg.keys._software import FileRecipientKey, FileSigner


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


def _release(tmp_path: Path, key: FileRecipientKey, signer: FileSigner, version: str,
             data: bytes) -> tuple[ModelSummary, ReleaseEvidence]:
    """A genuinely released model: a bundle signed by the release key, as the daemon installs."""
    payload = tmp_path / f"model-{version}.bin"
    payload.write_bytes(data)
    bundle = tmp_path / f"model-{version}.edgepkg"
    write_bundle(payload, bundle, manifest_fields={"name": "det", "version": version,
                                                   "format": "onnx"},
                 signer=signer, recipients=[key.public_key()])
    info = read_bundle_info(bundle)
    return (ModelSummary.from_mapping(info.manifest.summary()),
            ReleaseEvidence(info.manifest_bytes, info.signature_block))


def test_slot_forged_with_only_the_device_public_key_is_refused(tmp_path: Path) -> None:
    key = FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "test device key")
    release_key = FileSigner(ed25519.Ed25519PrivateKey.generate(), "test release key")
    store = SlotStore(tmp_path / "slots", sealer=BundleSealer(key, chunk_size=4096),
                      trusted_keys=lambda: [release_key.public_key()])
    good = b"genuine model v1" * 100
    summary, evidence = _release(tmp_path, key, release_key, "1.0.0", good)
    store.write(summary, [good], slot="a", release=evidence)
    store.switch_to("a")

    # attacker: no token, only the public key, writes slot b with a model nobody signed
    evil = b"attacker model, never signed by a release key" * 50
    attacker = SlotStore(tmp_path / "slots",
                         sealer=BundleSealer(_PublicOnlyKey(key.public_key()), chunk_size=4096))
    attacker.write(_summary("2.0.0", evil), [evil], slot="b")
    with pytest.raises(SlotError):
        store.switch_to("b")
    with pytest.raises(SlotError):
        store.export_plaintext("b", tmp_path / "run")

    # ... nor by re-using the genuine v1 evidence with a different model under the v1 label
    meta = json.loads((tmp_path / "slots" / "b" / "meta.json").read_bytes())
    meta["release"] = evidence.to_meta()
    (tmp_path / "slots" / "b" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SlotError):
        store.switch_to("b")
    # ... nor with a release signed by a key the device does not trust
    rogue = FileSigner(ed25519.Ed25519PrivateKey.generate(), "rogue key")
    _, rogue_evidence = _release(tmp_path, key, rogue, "2.0.0", evil)
    meta["release"] = rogue_evidence.to_meta()
    meta["summary"] = _summary("2.0.0", evil).to_dict()
    (tmp_path / "slots" / "b" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SlotError):
        store.switch_to("b")
    assert store.active_name() == "a"
    assert b"".join(store.open_plaintext()) == good


def test_install_without_release_evidence_is_refused(tmp_path: Path) -> None:
    key = FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "test device key")
    release_key = FileSigner(ed25519.Ed25519PrivateKey.generate(), "test release key")
    store = SlotStore(tmp_path / "slots", sealer=BundleSealer(key, chunk_size=4096),
                      trusted_keys=lambda: [release_key.public_key()])
    data = b"model" * 10
    with pytest.raises(SlotError):
        store.write(_summary("1.0.0", data), [data], slot="a")
    summary, evidence = _release(tmp_path, key, release_key, "1.0.0", data)
    other = _summary("1.0.0", b"other bytes")
    with pytest.raises(SlotError):
        store.write(other, [b"other bytes"], slot="a", release=evidence)
    store.write(summary, [data], slot="a", release=evidence)
    assert store.info("a") is not None


def test_unknown_signed_requirement_is_not_silently_ignored() -> None:
    facts = {"platform": "linux-x86_64"}
    assert unmet_requirements({"tflite_runtime": "99.0.0"}, facts) != []
