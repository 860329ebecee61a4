"""Seed inputs for the parser fuzzer: one small, valid file per parser, built by edgepkg itself.

Also hostile seeds that reproduce the issue-13 findings (shared-table TFLite, bsdiff control
bombs, short zstd-window segments), so mutation starts next to the known cliffs.
"""

from __future__ import annotations

import bz2
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from flatbuffers import Builder, flexbuffers

from edgepkg.bundle._container import Signature, encode_header
from edgepkg.formats import build

MANIFEST: dict[str, Any] = {
    "name": "fuzz-model", "version": "1.2.3", "format": "tflite",
    "plaintext_sha256": "ab" * 32, "plaintext_length": 1234,
    "created_at": "2026-01-01T00:00:00Z", "requirements": {"tflite_ops": ["FULLY_CONNECTED:1"]},
    "details": {"inputs": [{"name": "x", "shape": [1, 4]}]},
    "policy": {"metric": "top1_accuracy", "min": 0.7}, "delta": None, "compression": "zstd",
    "chunk_size": 1 << 20, "encryption": "aes-256-gcm-chunked", "recipients": ["cd" * 32],
    "signer": "ef" * 32, "schema": 1,
}


def manifest_bytes() -> bytes:
    return json.dumps(MANIFEST, sort_keys=True, separators=(",", ":")).encode()


def bundle_header() -> bytes:
    """An unverified bundle header (what ``edgepkg inspect`` parses before any signature check)."""
    sig = Signature(alg="ed25519", keyid="ef" * 32, sig=bytes(64))
    return encode_header(manifest_bytes(), sig, {"cd" * 32: bytes(65 + 32 + 16)}, 0)


def mlp_weights(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(4, 8)).astype(np.float32), np.zeros(8, np.float32)),
            (rng.normal(size=(8, 3)).astype(np.float32), np.zeros(3, np.float32))]


def shared_table_tflite(subgraph_refs: int, op_refs: int) -> bytes:
    """A TFLite model whose subgraph vector repeats one subgraph table ``subgraph_refs`` times
    and whose operator vector repeats one edgetpu-custom-op operator ``op_refs`` times."""
    b = Builder(1024)
    options = b.CreateByteVector(bytes(flexbuffers.Dumps({
        "4": build.edgetpu_package(14, "16.0", b"\x00" * 16)})))
    b.StartObject(11)  # Operator: 0 opcode_index, 5 custom_options
    b.PrependUint32Slot(0, 0, 0)
    b.PrependUOffsetTRelativeSlot(5, options, 0)
    op = b.EndObject()
    b.StartVector(4, op_refs, 4)
    for _ in range(op_refs):
        b.PrependUOffsetTRelative(op)
    ops = b.EndVector()
    b.StartObject(5)  # SubGraph: 3 operators
    b.PrependUOffsetTRelativeSlot(3, ops, 0)
    sg = b.EndObject()
    b.StartVector(4, subgraph_refs, 4)
    for _ in range(subgraph_refs):
        b.PrependUOffsetTRelative(sg)
    sgs = b.EndVector()
    name = b.CreateString("edgetpu-custom-op")
    b.StartObject(4)  # OperatorCode: 0 deprecated_builtin_code, 1 custom_code, 3 builtin_code
    b.PrependInt8Slot(0, 32, 0)
    b.PrependUOffsetTRelativeSlot(1, name, 0)
    b.PrependInt32Slot(3, 32, 0)
    oc = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(oc)
    ocs = b.EndVector()
    b.StartObject(7)  # Model: 0 version, 1 operator_codes, 2 subgraphs
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(1, ocs, 0)
    b.PrependUOffsetTRelativeSlot(2, sgs, 0)
    model = b.EndObject()
    b.Finish(model, file_identifier=b"TFL3")
    return bytes(b.Output())


def _offtout(v: int) -> bytes:
    return (abs(v) | (1 << 63 if v < 0 else 0)).to_bytes(8, "little")


def bsdiff_body(entries: list[tuple[int, int, int]], new_size: int, extra: bytes = b"") -> bytes:
    """A BSDIFF40 body with the given control entries, a zero diff block and ``extra``."""
    ctrl = bz2.compress(b"".join(_offtout(x) + _offtout(y) + _offtout(z) for x, y, z in entries))
    diff_len = sum(x for x, _, _ in entries)
    dif = bz2.compress(bytes(diff_len))
    return (struct.pack("<8sqqq", b"BSDIFF40", len(ctrl), len(dif), new_size)
            + ctrl + dif + bz2.compress(extra))


def model_files() -> dict[str, tuple[str, bytes]]:
    """name -> (format to force, file bytes), one per model parser."""
    w = mlp_weights()
    tfl = build.tflite_mlp_classifier(w)
    return {
        "tflite": ("auto", tfl),
        "tflite-int8": ("auto", build.tflite_mlp_classifier(
            w, int8=True, calibration=np.random.default_rng(1).normal(size=(16, 4)))),
        "tflm-flatbuffer": ("tflm", tfl),
        "tflm-c-array": ("auto", build.tflm_c_array(tfl, "g_model", style="tflm",
                                                    arena_size=8192).encode()),
        "tflm-xxd": ("auto", build.tflm_c_array(tfl, "model_tflite").encode()),
        "onnx": ("auto", build.onnx_mlp_classifier(w)),
        "tensorrt": ("auto", build.tensorrt_header(
            10, 3, 0, ultralytics_metadata={"imgsz": [640, 640], "names": {"0": "cat"}},
            size=512)),
        "edgetpu": ("auto", build.edgetpu_model(edgetpu_ops=2)),
        "shared-tflite": ("auto", shared_table_tflite(8, 8)),
    }


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
