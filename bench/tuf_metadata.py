"""TUF metadata size as releases and deltas accumulate (sizes only, no bundles).

    .venv/bin/python bench/tuf_metadata.py [--models 100] [--versions 50] [--json]

Builds the top-level ``targets`` role the way ``edgepkg publish`` fills it: per release one
full target and one delta target (from the previous version), each a hash-prefixed path with a
``custom.edgepkg`` summary of the shape :meth:`edgepkg.bundle.Manifest.tuf_custom` gives
(kind, name, version, format, requirements, sha256, length, policy, bundle signer, delta base).
Signs targets / snapshot / timestamp with one Ed25519 key (python-tuf) and reports the
serialized sizes after every ``--step`` versions of all models, plus what a device downloads:
on an idle poll (nothing changed) only ``timestamp.json``; after a release the new timestamp,
snapshot and targets (ngclient fetches each when its version changed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import UTC, datetime, timedelta

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

SER = JSONSerializer(compact=True)


def _custom(model: str, version: str, base: str | None) -> dict[str, object]:
    return {
        "edgepkg": {
            "kind": "delta" if base else "full",
            "name": model,
            "version": version,
            "format": "onnx",
            "requirements": {"onnx_opset": 17, "platform": "linux-aarch64"},
            "sha256": hashlib.sha256(f"{model}{version}".encode()).hexdigest(),
            "length": 48_000_000,
            "policy": {"metric": "accuracy", "min": "0.9", "max_regression": "0.01"},
            "bundle_signer": "ed25519:" + hashlib.sha256(b"release").hexdigest()[:16],
            "delta": {"base_version": base, "base_sha256": "ab" * 32, "method": "bsdiff4"}
            if base
            else None,
        }
    }


def _target(model: str, version: str, base: str | None) -> TargetFile:
    name = f"{model}-{version}" + (f"-from-{base}.delta" if base else ".edgepkg")
    digest = hashlib.sha256(name.encode()).hexdigest()
    tf = TargetFile(1_000_000, {"sha256": digest}, f"{model}/{digest}.{name}")
    tf.unrecognized_fields["custom"] = _custom(model, version, base)
    return tf


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=int, default=100)
    p.add_argument("--versions", type=int, default=50)
    p.add_argument("--step", type=int, default=10)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    signer = CryptoSigner.generate_ed25519()
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=365)
    targets = Metadata(Targets(expires=expires))
    snapshot = Metadata(Snapshot(expires=expires))
    timestamp = Metadata(Timestamp(expires=expires))
    rows = []
    for v in range(1, args.versions + 1):
        for m in range(args.models):
            model = f"model-{m:03d}"
            version = f"1.{v}.0"
            tf = _target(model, version, None)
            targets.signed.targets[tf.path] = tf
            if v > 1:
                d = _target(model, version, f"1.{v - 1}.0")
                targets.signed.targets[d.path] = d
        if v % args.step and v not in (1, args.versions):
            continue
        targets.signed.version += 1
        targets.signatures.clear()
        targets.sign(signer)
        t_bytes = targets.to_bytes(SER)
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        snapshot.signed.version += 1
        snapshot.signatures.clear()
        snapshot.sign(signer)
        s_bytes = snapshot.to_bytes(SER)
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        timestamp.signed.version += 1
        timestamp.signatures.clear()
        timestamp.sign(signer)
        ts_bytes = timestamp.to_bytes(SER)
        rows.append(
            {
                "versions_per_model": v,
                "targets": len(targets.signed.targets),
                "targets_json_bytes": len(t_bytes),
                "snapshot_json_bytes": len(s_bytes),
                "timestamp_json_bytes": len(ts_bytes),
                "idle_refresh_bytes": len(ts_bytes),
                "release_refresh_bytes": len(ts_bytes) + len(s_bytes) + len(t_bytes),
            }
        )
        if not args.json:
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
