"""install_delta: rebuild into the slot from the runtime export, or from the slot when the
export is stale."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from device_updater.install import install_delta
from device_updater.keystore import FileKeystore
from device_updater.slots import BundleSealer, ModelSummary, SlotStore, export_path
from edgepkg import keys as ekeys
from edgepkg.bundle import write_bundle
from edgepkg.delta import make_delta


def _summary(version: str, data: bytes) -> ModelSummary:
    return ModelSummary("m", version, hashlib.sha256(data).hexdigest(), len(data), "raw")


def _world(tmp_path: Path):  # type: ignore[no-untyped-def]
    w = np.random.default_rng(3).standard_normal(100_000).astype(np.float32)
    v1 = w.tobytes()
    w[-5000:] = 0.5
    v2 = w.tobytes()
    (tmp_path / "v1").write_bytes(v1)
    (tmp_path / "v2").write_bytes(v2)
    make_delta(tmp_path / "v1", tmp_path / "v2", tmp_path / "patch", methods=["tensor"])
    ks = FileKeystore(tmp_path / "device")
    dev_pub = ks.ensure_device_key()
    rel = ekeys.create_key("release", "signing", directory=tmp_path / "keys")
    bundle = tmp_path / "delta.edgepkg"
    write_bundle(tmp_path / "patch", bundle, manifest_fields={
        "name": "m", "version": "2.0.0", "format": "raw",
        "delta": {"base_version": "1.0.0", "base_sha256": hashlib.sha256(v1).hexdigest(),
                  "target_sha256": hashlib.sha256(v2).hexdigest(), "target_length": len(v2),
                  "method": "tensor"}},
        signer=ekeys.load_signer(rel.private_ref), recipients=[dev_pub])
    slots = SlotStore(tmp_path / "slots", sealer=BundleSealer(ks.recipient_key()))
    slots.write(_summary("1.0.0", v1), [v1], slot="a")
    slots.switch_to("a")
    keys = {"keys": [ks.recipient_key()], "trusted": [ekeys.load_public_key(str(rel.public_path))]}
    return slots, bundle, keys, v2


def test_delta_install_uses_the_runtime_export_as_base(tmp_path):
    slots, bundle, keys, v2 = _world(tmp_path)
    runtime = tmp_path / "run"
    slots.export_plaintext(None, runtime)
    (work := tmp_path / "work").mkdir()
    info = install_delta(slots, "b", _summary("2.0.0", v2), bundle, workdir=work,
                         runtime_dir=runtime, **keys)
    assert info.sha256 == hashlib.sha256(v2).hexdigest()
    assert b"".join(slots.open_plaintext("b")) == v2
    assert not (work / "old").exists()  # the slot was not decrypted again


def test_delta_install_with_a_stale_export_rebuilds_from_the_slot(tmp_path):
    slots, bundle, keys, v2 = _world(tmp_path)
    runtime = tmp_path / "run"
    stale = export_path(slots.active(), runtime)  # type: ignore[arg-type]
    runtime.mkdir()
    stale.write_bytes(b"\1" * len(v2))  # right size, wrong content
    (work := tmp_path / "work").mkdir()
    install_delta(slots, "b", _summary("2.0.0", v2), bundle, workdir=work,
                  runtime_dir=runtime, **keys)
    assert b"".join(slots.open_plaintext("b")) == v2
