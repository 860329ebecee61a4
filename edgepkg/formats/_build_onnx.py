"""ONNX builders for the validation corpus (re-exported by :mod:`edgepkg.formats.build`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgepkg.errors import UsageError

Weights = Sequence[tuple[np.ndarray, np.ndarray]]


def _check_weights(weights: Weights) -> list[tuple[np.ndarray, np.ndarray]]:
    from edgepkg.formats._build_common import _check_weights as check

    return check(weights)


_ONNX_INPUT_TYPES = {"float32": 1, "float64": 11, "float16": 10}  # onnx.TensorProto values
ONNX_HEADS = ("softmax", "logits", "argmax", "both", "value")


def onnx_mlp(
    weights: Weights, *, head: str = "softmax", input_dtype: str = "float32",
    input_name: str = "input", output_name: str = "probabilities", opset: int = 17,
    hog_bytes: int = 0, producer: str = "edgepkg",
) -> bytes:
    """An MLP as ONNX with a chosen ``head`` (see :data:`ONNX_HEADS`):

    ``softmax`` -> ``output_name`` probabilities ``[N, C]``; ``logits`` -> ``[N, C]`` raw;
    ``argmax`` -> int64 class ids ``[N]``; ``both`` -> ``logits`` and ``output_name``;
    ``value`` -> the last layer as is (regression values or anomaly scores).
    ``input_dtype`` other than float32 declares that input type (cast inside the graph);
    ``hog_bytes`` adds a runtime tensor of that size that does not change the outputs.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if head not in ONNX_HEADS:
        raise UsageError(f"head must be one of {ONNX_HEADS}")
    if input_dtype not in _ONNX_INPUT_TYPES:
        raise UsageError(f"input_dtype must be one of {sorted(_ONNX_INPUT_TYPES)}")
    layers = _check_weights(weights)
    nodes, inits = [], []
    x = input_name
    if input_dtype != "float32":
        nodes.append(helper.make_node("Cast", [x], ["input_f32"], to=TensorProto.FLOAT))
        x = "input_f32"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        z = f"logits{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [z], name=f"gemm{i}"))
        x = z
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [z], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    if hog_bytes:
        n = max(int(hog_bytes) // 4, 1)
        inits.append(numpy_helper.from_array(np.array([n], np.int64), "hog_shape"))
        inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
        nodes += [
            helper.make_node("ConstantOfShape", ["hog_shape"], ["hog"],
                             value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])),
            helper.make_node("ReduceSum", ["hog"], ["hog_sum"], keepdims=0),
            helper.make_node("Mul", ["hog_sum", "zero"], ["hog_zero"]),
            helper.make_node("Add", [x, "hog_zero"], ["with_hog"]),
        ]
        x = "with_hog"
    f_in, c_out = layers[0][0].shape[0], layers[-1][0].shape[1]
    float_t = TensorProto.FLOAT
    outputs = []
    if head in ("logits", "value", "both"):
        name = "logits" if head == "both" else output_name
        nodes.append(helper.make_node("Identity", [x], [name]))
        outputs.append(helper.make_tensor_value_info(name, float_t, ["N", c_out]))
    if head in ("softmax", "both"):
        nodes.append(helper.make_node("Softmax", [x], [output_name], axis=-1))
        outputs.append(helper.make_tensor_value_info(output_name, float_t, ["N", c_out]))
    if head == "argmax":
        nodes.append(helper.make_node("ArgMax", [x], [output_name], axis=1, keepdims=0))
        outputs.append(helper.make_tensor_value_info(output_name, TensorProto.INT64, ["N"]))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info(
            input_name, _ONNX_INPUT_TYPES[input_dtype], ["N", f_in])],
        outputs, initializer=inits)
    model = helper.make_model(graph, producer_name=producer,
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 18 else 9
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def onnx_detector(box_w: np.ndarray, box_b: np.ndarray, cls_w: np.ndarray, cls_b: np.ndarray,
                  *, proposals: int, opset: int = 17) -> bytes:
    """A detector over ``K = proposals`` feature vectors per image: input ``proposals``
    ``[N, K, F]`` -> ``boxes`` ``[N, K, 4]`` (x1, y1, x2, y2), ``scores`` ``[N, K]`` (top class
    probability), ``classes`` int64 ``[N, K]``. ``box_w`` ``[F, 4]``, ``cls_w`` ``[F, C]``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bw, bb = np.asarray(box_w, np.float32), np.asarray(box_b, np.float32)
    cw, cb = np.asarray(cls_w, np.float32), np.asarray(cls_b, np.float32)
    if bw.ndim != 2 or bw.shape[1] != 4 or cw.ndim != 2 or cw.shape[0] != bw.shape[0]:
        raise UsageError("box_w must be [F, 4] and cls_w [F, C]")
    f = bw.shape[0]
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((bw, "Wbox"), (bb, "bbox"), (cw, "Wcls"), (cb, "bcls"))]
    nodes = [
        helper.make_node("MatMul", ["proposals", "Wbox"], ["box_raw"]),
        helper.make_node("Add", ["box_raw", "bbox"], ["boxes"]),
        helper.make_node("MatMul", ["proposals", "Wcls"], ["cls_raw"]),
        helper.make_node("Add", ["cls_raw", "bcls"], ["cls_logits"]),
        helper.make_node("Softmax", ["cls_logits"], ["cls_prob"], axis=-1),
        helper.make_node("ReduceMax", ["cls_prob"], ["scores"], axes=[-1], keepdims=0),
        helper.make_node("ArgMax", ["cls_prob"], ["classes"], axis=-1, keepdims=0),
    ]
    k = int(proposals)
    graph = helper.make_graph(
        nodes, "detector",
        [helper.make_tensor_value_info("proposals", TensorProto.FLOAT, ["N", k, f])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", k, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", k]),
         helper.make_tensor_value_info("classes", TensorProto.INT64, ["N", k])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="edgepkg",
                              opset_imports=[helper.make_opsetid("", min(opset, 17))])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
