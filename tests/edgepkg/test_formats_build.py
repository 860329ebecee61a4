"""Model builders (edgepkg.formats.build) produce models their runtimes run correctly."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edgepkg import errors
from edgepkg.formats import build
from tests.fixtures.models import run_litert


def test_trained_mlp_is_accurate_on_a_holdout_set() -> None:
    x, y = build.blobs_dataset(600, 8, 3, seed=3)
    weights = build.train_mlp(x[:400], y[:400], epochs=300, seed=3)
    acc = (build.mlp_forward(weights, x[400:]).argmax(1) == y[400:]).mean()
    assert acc >= 0.9


def test_onnx_runtime_matches_numpy_probabilities(mlp) -> None:
    import onnxruntime as ort

    weights, x, _ = mlp
    sess = ort.InferenceSession(build.onnx_mlp_classifier(weights, input_name="features"),
                                providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"features": x})[0]
    assert np.allclose(probs, build.mlp_forward(weights, x), atol=1e-5)


def test_tflite_float_matches_numpy_and_int8_keeps_the_argmax(mlp) -> None:
    weights, x, _ = mlp
    ref = build.mlp_forward(weights, x)
    assert np.allclose(run_litert(build.tflite_mlp_classifier(weights), x), ref, atol=1e-5)
    q = run_litert(build.tflite_mlp_classifier(weights, int8=True, calibration=x), x)
    assert q.dtype == np.int8
    assert (q.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_tflite_micro_runs_the_int8_classifier_like_litert(mlp) -> None:
    from tflite_micro.python.tflite_micro import runtime

    weights, x, _ = mlp
    data = build.tflite_mlp_classifier(weights, int8=True, calibration=x)
    litert = run_litert(data, x[:5])
    it = runtime.Interpreter.from_bytes(data)
    q = it.get_input_details(0)["quantization_parameters"]
    for i in range(5):
        it.set_input(build.quantize_input(x[i : i + 1], float(q["scales"][0]),
                                          int(q["zero_points"][0])), 0)
        it.invoke()
        assert np.array_equal(it.get_output(0), litert[i : i + 1])


def test_mismatched_layer_shapes_are_a_usage_error() -> None:
    w = [(np.zeros((4, 3)), np.zeros(3)), (np.zeros((5, 2)), np.zeros(2))]
    with pytest.raises(errors.UsageError, match="layer 1"):
        build.onnx_mlp_classifier(w)


def test_tensorrt_header_layout() -> None:
    plain = build.tensorrt_header(10, 3, 0, size=64)
    assert plain[:4] == b"ftrt" and plain[24:27] == bytes([10, 3, 0]) and len(plain) == 64
    meta = {"task": "detect"}
    pref = build.tensorrt_header(8, 6, 1, ultralytics_metadata=meta, size=64)
    (n,) = struct.unpack_from("<i", pref)
    assert json.loads(pref[4 : 4 + n]) == meta and pref[4 + n :][:4] == b"ftrt"


def test_c_array_refuses_a_non_identifier_name() -> None:
    with pytest.raises(errors.UsageError):
        build.tflm_c_array(b"\x00", "x[]; system(")
