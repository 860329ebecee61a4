"""Build real models (tests, device validation runners, the end-to-end demo).

Every builder returns the model file's bytes:

- :func:`onnx_mlp_classifier` – Gemm/Relu/.../Softmax, float32 ``[N, F]`` -> probabilities
  ``[N, C]``; runs under ONNX Runtime.
- :func:`onnx_mlp` – the same MLP with a chosen head (probabilities, logits, class ids via
  ArgMax, logits *and* probabilities, or a raw value for regression/anomaly scores), a chosen
  input dtype and an optional memory hog (a large runtime tensor): the validation corpus.
- :func:`onnx_detector` – a small detector: ``[N, K, F]`` proposals -> ``boxes [N, K, 4]``,
  ``scores [N, K]``, ``classes [N, K]`` (MatMul/Softmax/ReduceMax/ArgMax).
- :func:`tflite_mlp_classifier` – FULLY_CONNECTED/RELU/.../SOFTMAX as a real TFLite flatbuffer,
  float32 or full-integer int8 (int8 input and output; quantize the input with the input tensor's
  ``quantization`` = (scale, zero_point)); runs under LiteRT and TFLite Micro.
- :func:`tflm_c_array` – a model as C/C++ source (``xxd -i`` or TFLM ``generate_cc_arrays`` style).
- :func:`tensorrt_header`, :func:`edgetpu_model` – format-faithful synthetic files for tests (they
  carry the real headers/packages but no runnable engine/executable).
- :func:`blobs_dataset`, :func:`train_mlp` – a small separable dataset and a numpy trainer so a
  demo can publish models with a real accuracy on a holdout set.

``weights`` is a list of ``(W, b)`` with ``W`` shaped ``[inputs, outputs]`` (numpy convention:
``x @ W + b``); ReLU between layers, softmax at the end.
TFLite building uses the generated schema module of ``ai-edge-litert`` (or ``tflite-micro``):
install ``edgepkg[tflite]``.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgepkg.errors import UsageError

__all__ = [
    "blobs_dataset",
    "edgetpu_model",
    "mlp_forward",
    "onnx_detector",
    "onnx_mlp",
    "onnx_mlp_classifier",
    "quantize_input",
    "tensorrt_header",
    "tflite_mlp_classifier",
    "tflm_c_array",
    "train_mlp",
]

from edgepkg.formats._build_common import Weights, _check_weights

# --- numpy reference -------------------------------------------------------------------------


def mlp_forward(weights: Weights, x: np.ndarray) -> np.ndarray:
    """Float reference: probabilities ``[N, C]``."""
    h = np.asarray(x, dtype=np.float32)
    layers = _check_weights(weights)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    e = np.exp(h - h.max(axis=1, keepdims=True))
    out: np.ndarray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def blobs_dataset(
    n: int, features: int, classes: int, *, seed: int = 0, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: ``(X float32 [n, features], y int64 [n])``, deterministic per seed."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3.0, size=(classes, features))
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(0, spread, size=(n, features))
    return x.astype(np.float32), y.astype(np.int64)


def train_mlp(
    x: np.ndarray, y: np.ndarray, *, hidden: int = 16, classes: int | None = None,
    epochs: int = 200, lr: float = 0.1, seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Full-batch gradient descent on a one-hidden-layer MLP (seconds for demo-sized data)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    c = int(classes if classes is not None else y.max() + 1)
    f = x.shape[1]
    w1 = rng.normal(0, np.sqrt(2.0 / f), size=(f, hidden)).astype(np.float32)
    b1 = np.zeros(hidden, np.float32)
    w2 = rng.normal(0, np.sqrt(1.0 / hidden), size=(hidden, c)).astype(np.float32)
    b2 = np.zeros(c, np.float32)
    onehot = np.eye(c, dtype=np.float32)[y]
    for _ in range(epochs):
        z1 = x @ w1 + b1
        h = np.maximum(z1, 0)
        p = mlp_forward([(w1, b1), (w2, b2)], x)
        g2 = (p - onehot) / len(x)
        gw2, gb2 = h.T @ g2, g2.sum(0)
        gh = (g2 @ w2.T) * (z1 > 0)
        gw1, gb1 = x.T @ gh, gh.sum(0)
        w1 -= lr * gw1
        b1 -= lr * gb1
        w2 -= lr * gw2
        b2 -= lr * gb2
    return [(w1, b1), (w2, b2)]


# --- ONNX ------------------------------------------------------------------------------------


def onnx_mlp_classifier(
    weights: Weights, *, input_name: str = "input", output_name: str = "probabilities",
    opset: int = 17, ir_version: int = 9, producer: str = "edgepkg",
) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers = _check_weights(weights)
    nodes, inits = [], []
    x = input_name
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        z = f"logits{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [z], name=f"gemm{i}"))
        x = z
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [z], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    nodes.append(helper.make_node("Softmax", [x], [output_name], axis=-1, name="softmax"))
    f_in, c_out = layers[0][0].shape[0], layers[-1][0].shape[1]
    graph = helper.make_graph(
        nodes, "mlp_classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", f_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", c_out])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, producer_name=producer, opset_imports=[helper.make_opsetid("", opset)]
    )
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


# Builders for the validation corpus live apart to keep this module small.
from edgepkg.formats._build_onnx import onnx_detector, onnx_mlp  # noqa: E402

# --- TFLite ----------------------------------------------------------------------------------


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError:
        try:
            from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s
        except ImportError as exc:
            raise UsageError(
                "building TFLite models needs ai-edge-litert or tflite-micro "
                "(pip install 'edgepkg[tflite]')"
            ) from exc
    return s


def _quant_params(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1e-8
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return float(scale), zp


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float -> int8 with a tensor's (scale, zero_point), as TFLite expects."""
    q = np.round(np.asarray(x, np.float32) / scale) + zero_point
    out: np.ndarray = np.clip(q, -128, 127).astype(np.int8)
    return out


def tflite_mlp_classifier(
    weights: Weights, *, int8: bool = False, calibration: np.ndarray | None = None,
    batch: int = 1, min_runtime_version: str | None = "1.5.0",
    description: str = "edgepkg mlp classifier",
) -> bytes:
    """A TFLite MLP classifier. ``int8=True`` needs ``calibration`` inputs (float ``[M, F]``)
    to choose activation ranges; without it, standard-normal samples are used."""
    s = _schema()
    layers = _check_weights(weights)
    f_in = layers[0][0].shape[0]
    int8_t, int32_t, f32_t = s.TensorType.INT8, s.TensorType.INT32, s.TensorType.FLOAT32

    buffers: list[Any] = [s.BufferT()]
    tensors: list[Any] = []

    def add_buffer(data: bytes | None) -> int:
        b = s.BufferT()
        if data is not None:
            b.data = np.frombuffer(data, dtype=np.uint8).copy()
        buffers.append(b)
        return len(buffers) - 1

    def add_tensor(name: str, shape: list[int], ttype: int, data: bytes | None = None,
                   q: tuple[Sequence[float], Sequence[int]] | None = None) -> int:
        t = s.TensorT()
        t.name = name
        t.shape = list(shape)
        if shape and shape[0] == batch and data is None:
            t.shapeSignature = [-1, *shape[1:]]
        t.type = ttype
        t.buffer = add_buffer(data) if data is not None else 0
        if q is not None:
            qp = s.QuantizationParametersT()
            qp.scale = [float(v) for v in q[0]]
            qp.zeroPoint = [int(v) for v in q[1]]
            t.quantization = qp
        tensors.append(t)
        return len(tensors) - 1

    act_q: list[tuple[float, int]] = []
    if int8:
        cal = calibration
        if cal is None:
            cal = np.random.default_rng(0).normal(size=(256, f_in)).astype(np.float32)
        h = np.asarray(cal, np.float32)
        act_q.append(_quant_params(float(h.min()), float(h.max())))
        for i, (w, b) in enumerate(layers):
            z = h @ w + b
            act_q.append(_quant_params(float(z.min()), float(z.max())))
            if i < len(layers) - 1:
                h = np.maximum(z, 0)
                act_q.append(_quant_params(0.0, float(h.max())))

    FC, RELU, SOFTMAX = (s.BuiltinOperator.FULLY_CONNECTED, s.BuiltinOperator.RELU,
                         s.BuiltinOperator.SOFTMAX)
    versions = {FC: 4, RELU: 2, SOFTMAX: 2} if int8 else {FC: 1, RELU: 1, SOFTMAX: 1}
    used: list[int] = []
    operators: list[Any] = []

    def add_op(code: int, inputs: list[int], outputs: list[int],
               opt_type: int = 0, opt: Any = None) -> None:
        if code not in used:
            used.append(code)
        op = s.OperatorT()
        op.opcodeIndex = used.index(code)
        op.inputs, op.outputs = inputs, outputs
        if opt is not None:
            op.builtinOptionsType, op.builtinOptions = opt_type, opt
        operators.append(op)

    qi = 0
    in_q = act_q[qi] if int8 else None
    x = add_tensor("input", [batch, f_in], int8_t if int8 else f32_t,
                   q=([in_q[0]], [in_q[1]]) if in_q else None)
    first = x
    for i, (w, b) in enumerate(layers):
        n_out = w.shape[1]
        if int8:
            assert in_q is not None
            w_scale = float(np.abs(w).max() / 127.0) or 1e-8
            wq = np.clip(np.round(w.T / w_scale), -127, 127).astype(np.int8)
            b_scale = in_q[0] * w_scale
            bq = np.round(b / b_scale).astype(np.int32)
            wt = add_tensor(f"dense{i}/kernel", [n_out, w.shape[0]], int8_t, wq.tobytes(),
                            ([w_scale], [0]))
            bt = add_tensor(f"dense{i}/bias", [n_out], int32_t, bq.tobytes(), ([b_scale], [0]))
            qi += 1
            zq = act_q[qi]
            z = add_tensor(f"dense{i}/out", [batch, n_out], int8_t, q=([zq[0]], [zq[1]]))
        else:
            wt = add_tensor(f"dense{i}/kernel", [n_out, w.shape[0]], f32_t,
                            np.ascontiguousarray(w.T).tobytes())
            bt = add_tensor(f"dense{i}/bias", [n_out], f32_t, b.tobytes())
            z = add_tensor(f"dense{i}/out", [batch, n_out], f32_t)
        fco = s.FullyConnectedOptionsT()
        add_op(FC, [x, wt, bt], [z], s.BuiltinOptions.FullyConnectedOptions, fco)
        x = z
        in_q = act_q[qi] if int8 else None
        if i < len(layers) - 1:
            if int8:
                qi += 1
                in_q = act_q[qi]
                r = add_tensor(f"relu{i}", [batch, n_out], int8_t, q=([in_q[0]], [in_q[1]]))
            else:
                r = add_tensor(f"relu{i}", [batch, n_out], f32_t)
            add_op(RELU, [x], [r])
            x = r
    c_out = layers[-1][0].shape[1]
    out = add_tensor("probabilities", [batch, c_out], int8_t if int8 else f32_t,
                     q=([1.0 / 256.0], [-128]) if int8 else None)
    so = s.SoftmaxOptionsT()
    so.beta = 1.0
    add_op(SOFTMAX, [x], [out], s.BuiltinOptions.SoftmaxOptions, so)

    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [first], [out], operators
    sg.name = "main"
    opcodes = []
    for code in used:
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), versions[code]
        opcodes.append(oc)
    return _finish_model(s, opcodes, [sg], buffers, description, min_runtime_version)


def _finish_model(s: Any, opcodes: list[Any], subgraphs: list[Any], buffers: list[Any],
                  description: str, min_runtime_version: str | None) -> bytes:
    import flatbuffers

    model = s.ModelT()
    model.version = 3
    model.description = description
    model.operatorCodes = opcodes
    model.subgraphs = subgraphs
    if min_runtime_version is not None:
        raw = min_runtime_version.encode("ascii").ljust(16, b"\x00")
        b = s.BufferT()
        b.data = np.frombuffer(raw, dtype=np.uint8).copy()
        buffers.append(b)
        md = s.MetadataT()
        md.name = "min_runtime_version"
        md.buffer = len(buffers) - 1
        model.metadata = [md]
    model.buffers = buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# --- Edge TPU --------------------------------------------------------------------------------


def edgetpu_package(min_runtime_version: int, compiler_version: str,
                    executable: bytes = b"\x00" * 64) -> bytes:
    """A ``DWN1`` flatbuffer Package: 0 min_runtime_version, 1 executable, 4 compiler_version."""
    import flatbuffers

    b = flatbuffers.Builder(256)
    exe = b.CreateByteVector(executable)
    cv = b.CreateString(compiler_version)
    b.StartObject(7)
    b.PrependInt32Slot(0, min_runtime_version, 0)
    b.PrependUOffsetTRelativeSlot(1, exe, 0)
    b.PrependUOffsetTRelativeSlot(4, cv, 0)
    b.Finish(b.EndObject(), file_identifier=b"DWN1")
    return bytes(b.Output())


def edgetpu_model(
    *, min_runtime_version: int = 14, compiler_version: str = "16.0.384591198",
    edgetpu_ops: int = 1, features: int = 16, classes: int = 4,
    executable: bytes = b"\x00" * 64, custom_options: bytes | None = None,
) -> bytes:
    """A TFLite model shaped like ``edgetpu_compiler`` output: uint8 tensors chained through
    ``edgetpu_ops`` ``edgetpu-custom-op`` operators whose FlexBuffer options carry a DWN1 package
    (key "4"). Not runnable without an Edge TPU; ``custom_options`` overrides the options."""
    from flatbuffers import flexbuffers

    s = _schema()
    if custom_options is None:
        custom_options = bytes(flexbuffers.Dumps({
            "1": "edgepkg-synthetic",
            "2": 0,
            "4": edgetpu_package(min_runtime_version, compiler_version, executable),
        }))
    tensors = []
    for i in range(edgetpu_ops + 1):
        t = s.TensorT()
        t.name = "input" if i == 0 else ("output" if i == edgetpu_ops else f"t{i}")
        t.shape = [1, features if i < edgetpu_ops else classes]
        t.type = s.TensorType.UINT8
        t.buffer = 0
        qp = s.QuantizationParametersT()
        qp.scale, qp.zeroPoint = [1.0 / 255.0], [0]
        t.quantization = qp
        tensors.append(t)
    ops = []
    for i in range(edgetpu_ops):
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, [i], [i + 1]
        op.customOptions = list(custom_options)
        op.customOptionsFormat = s.CustomOptionsFormat.FLEXBUFFERS
        ops.append(op)
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [0], [edgetpu_ops], ops
    oc = s.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = s.BuiltinOperator.CUSTOM
    oc.customCode, oc.version = "edgetpu-custom-op", 1
    return _finish_model(s, [oc], [sg], [s.BufferT()], "edgetpu_compiler (synthetic)", "1.14.0")


# --- C arrays and TensorRT headers -----------------------------------------------------------


def tflm_c_array(
    model_bytes: bytes, var_name: str, *, style: str = "xxd", arena_size: int | None = None
) -> str:
    """C/C++ source holding ``model_bytes``: ``xxd -i`` output, or TFLM ``generate_cc_arrays``
    style (``alignas(16) const unsigned char NAME[]`` + ``NAME_size``)."""
    if not re.fullmatch(r"[A-Za-z_]\w{0,127}", var_name):
        raise UsageError(f"{var_name!r} is not a C identifier")
    if style not in ("xxd", "tflm"):
        raise UsageError("style must be 'xxd' or 'tflm'")
    rows = [
        ", ".join(f"0x{v:02x}" for v in model_bytes[i : i + 12])
        for i in range(0, len(model_bytes), 12)
    ]
    body = ",\n  ".join(rows)
    out = []
    if style == "xxd":
        out.append(f"unsigned char {var_name}[] = {{\n  {body}\n}};")
        out.append(f"unsigned int {var_name}_len = {len(model_bytes)};")
    else:
        out.append("// Generated in the style of tflite-micro's generate_cc_arrays.py")
        out.append("#include <cstdint>\n")
        out.append(f"alignas(16) const unsigned char {var_name}[] = {{\n  {body}\n}};")
        out.append(f"const unsigned int {var_name}_size = {len(model_bytes)};")
    if arena_size is not None:
        out.append(f"constexpr int kTensorArenaSize = {int(arena_size)};")
    return "\n".join(out) + "\n"


def tensorrt_header(
    major: int, minor: int, patch: int, *, ultralytics_metadata: Mapping[str, Any] | None = None,
    size: int = 4096, seed: int = 0,
) -> bytes:
    """An engine-shaped file: ``ftrt`` magic, version bytes at 24/25/26, deterministic filler up to
    ``size`` bytes; optionally behind an Ultralytics ``[int32 LE len][JSON]`` prefix."""
    if size < 32:
        raise UsageError("a TensorRT header needs at least 32 bytes")
    body = bytearray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    body[0:4] = b"ftrt"
    body[4:24] = b"\x00" * 20
    body[24:27] = bytes([major, minor, patch])
    if ultralytics_metadata is None:
        return bytes(body)
    meta = json.dumps(dict(ultralytics_metadata)).encode("utf-8")
    return struct.pack("<i", len(meta)) + meta + bytes(body)
