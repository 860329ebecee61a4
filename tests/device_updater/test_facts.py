"""Requirement checks fail closed: every signed requirement key is checked against a device fact,
a missing fact or an unknown key is a reason not to install (never silently ignored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_updater.facts import KNOWN_KEYS, discover_facts, unmet_requirements
from edgepkg.formats import detect
from edgepkg.formats.build import (
    edgetpu_model,
    onnx_mlp_classifier,
    tensorrt_header,
    tflite_mlp_classifier,
    tflm_c_array,
)

_W = [(np.ones((4, 3), np.float32), np.zeros(3, np.float32))]
ORT_FACTS = {"platform": "linux-x86_64", "onnxruntime_version": "1.20.1", "onnx_max_opset": 21,
             "onnx_max_ml_opset": 4, "onnx_max_ir_version": 10}


def _detected(tmp_path: Path, name: str, data: bytes | str, **kw: Any) -> dict[str, Any]:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return dict(detect(path, **kw).requirements)


def test_every_key_edgepkg_formats_emits_is_checked(tmp_path: Path) -> None:
    tfl = tflite_mlp_classifier(_W)
    emitted = {
        **_detected(tmp_path, "m.onnx", onnx_mlp_classifier(_W)),
        **_detected(tmp_path, "m.tflite", tfl),
        **_detected(tmp_path, "tpu.tflite", edgetpu_model()),
        **_detected(tmp_path, "m.cc", tflm_c_array(tfl, "g_model", style="tflm",
                                                   arena_size=8192)),
        **_detected(tmp_path, "m.engine", tensorrt_header(10, 3, 0),
                    extra_requirements={"gpu_sm": 87}),
    }
    assert {"onnx_opsets", "tflite_runtime", "tflite_ops", "tflm_ops", "alignment",
            "arena_size", "edgetpu_runtime", "tensorrt", "gpu_sm"} <= set(emitted)
    assert set(emitted) <= KNOWN_KEYS, set(emitted) - KNOWN_KEYS


def test_unknown_requirement_key_is_unmet_and_says_upgrade() -> None:
    reasons = unmet_requirements({"npu_driver": "3.1"}, {"platform": "linux-x86_64"})
    assert reasons and "not known to this updater" in reasons[0] and "upgrade" in reasons[0]


def test_operator_require_key_is_not_ignored(tmp_path: Path) -> None:
    req = _detected(tmp_path, "m.onnx", onnx_mlp_classifier(_W),
                    extra_requirements={"camera": "imx477"})
    assert any("camera" in r for r in unmet_requirements(req, ORT_FACTS))


def test_real_onnx_bundle_requirements_met_by_this_machine(tmp_path: Path) -> None:
    """What the device end-to-end tests rely on: an opset-17 model installs here."""
    req = _detected(tmp_path, "m.onnx", onnx_mlp_classifier(_W))
    assert unmet_requirements(req, discover_facts()) == []


@pytest.mark.parametrize(("req", "facts", "expect"), [
    ({"onnx_opset": 22}, ORT_FACTS, "opset 22"),
    ({"onnx_opset": 17}, {"platform": "x"}, "no ONNX Runtime"),
    ({"onnx_ir_version": 11}, ORT_FACTS, "IR version 11"),
    ({"onnx_opsets": ["ai.onnx.ml=5"]}, ORT_FACTS, "ONNX-ML opset 5"),
    ({"onnx_opsets": ["com.example.vision=1"]}, ORT_FACTS, "com.example.vision"),
    ({"onnx_opsets": ["com.microsoft=2"]}, ORT_FACTS, "com.microsoft"),
    ({"onnx_opsets": "ai.onnx=17"}, ORT_FACTS, "must be a list"),
])
def test_onnx_requirements_beyond_the_runtime_are_unmet(
        req: dict[str, Any], facts: dict[str, Any], expect: str) -> None:
    reasons = unmet_requirements(req, facts)
    assert reasons and expect in " ".join(reasons), reasons


def test_onnx_requirements_within_the_runtime_are_met() -> None:
    req = {"onnx_ir_version": 9, "onnx_opset": 17,
           "onnx_opsets": ["ai.onnx=17", "ai.onnx.ml=3", "com.microsoft=1", "com.example=1"]}
    assert unmet_requirements(req, {**ORT_FACTS, "onnx_custom_domains": ["com.example"]}) == []


def test_onnx_limits_come_from_the_installed_onnxruntime_not_the_onnx_package() -> None:
    facts = discover_facts()
    if "onnxruntime_version" not in facts:
        pytest.skip("onnxruntime not installed")
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def loads(opset: int) -> bool:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = min(int(facts["onnx_max_ir_version"]), 9)
        try:
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:
            return False
        return True

    assert loads(int(facts["onnx_max_opset"]))  # the limit we claim really loads


@pytest.mark.parametrize(("req", "facts", "expect"), [
    ({"tflite_runtime": "99.0.0"}, {"tflite_runtime_version": "2.16.0"}, "99.0.0"),
    ({"tflite_runtime": "1.5.0"}, {}, "device has none"),
    ({"tflite_ops": ["FULLY_CONNECTED:1"]}, {}, "interpreter"),
    ({"tflite_ops": ["FULLY_CONNECTED:1", "custom:MyOp:1"]},
     {"tflite_runtime_version": "2.16.0"}, "MyOp"),
    ({"tflm_ops": ["FULLY_CONNECTED"]}, {}, "TFLite Micro"),
    ({"tflm_ops": ["FULLY_CONNECTED", "SOFTMAX"]}, {"tflm_ops": ["FULLY_CONNECTED"]}, "SOFTMAX"),
    ({"arena_size": 8192}, {}, "does not declare its arena"),
    ({"arena_size": 8192}, {"tflm_arena_bytes": 4096}, "8192"),
    ({"alignment": 16}, {"model_alignment": 4}, "16-byte aligned"),
    ({"alignment": 16}, {}, "16-byte aligned"),
])
def test_tflite_and_tflm_requirements_the_device_lacks_are_unmet(
        req: dict[str, Any], facts: dict[str, Any], expect: str) -> None:
    reasons = unmet_requirements(req, facts)
    assert reasons and expect in " ".join(reasons), reasons


def test_tflite_and_tflm_requirements_met(tmp_path: Path) -> None:
    tfl = tflite_mlp_classifier(_W)
    facts = {"tflite_runtime_version": "2.16.0", "tflm_version": "0.dev1",
             "tflm_arena_bytes": 16384, "model_alignment": 16}
    assert unmet_requirements(_detected(tmp_path, "m.tflite", tfl), facts) == []
    tflm = _detected(tmp_path, "m.cc", tflm_c_array(tfl, "g", style="tflm", arena_size=8192))
    assert unmet_requirements(tflm, facts) == []
    assert unmet_requirements(tflm, {**facts, "tflm_version": None,
                                     "tflm_ops": tflm["tflm_ops"]}) == []


def test_edgetpu_model_needs_the_edgetpu_runtime(tmp_path: Path) -> None:
    req = _detected(tmp_path, "tpu.tflite", edgetpu_model(min_runtime_version=14))
    base = {"tflite_runtime_version": "2.16.0"}
    assert any("Edge TPU runtime" in r for r in unmet_requirements(req, base))
    assert any("13" in r for r in unmet_requirements(req, {**base, "edgetpu_runtime": 13}))
    assert unmet_requirements(req, {**base, "edgetpu_runtime": 14}) == []


def test_tensorrt_engine_needs_exact_version_and_sm(tmp_path: Path) -> None:
    req = _detected(tmp_path, "m.engine", tensorrt_header(10, 3, 0),
                    extra_requirements={"gpu_sm": 87})
    assert unmet_requirements(req, {"tensorrt_version": "10.3.0", "gpu_sm": 87}) == []
    assert unmet_requirements(req, {"tensorrt_version": "10.4.0", "gpu_sm": 87})
    assert unmet_requirements(req, {"tensorrt_version": "10.3.0", "gpu_sm": "sm_89"})
    assert unmet_requirements(req, {})
