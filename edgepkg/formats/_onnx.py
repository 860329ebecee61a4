"""ONNX ModelProto inspection (pure: bytes in, plain values out) via the ``onnx`` package.

A protobuf parser accepts many byte strings (even the empty one), so "parses" is not enough:
an ONNX model must have an ir_version, a graph, and (IR >= 3) at least one opset import.
Models whose tensors live in external data files are refused: the bundle would carry only the
graph and the device could not run it.
"""

from __future__ import annotations

from typing import Any


class OnnxError(Exception):
    """Internal: the bytes are not a usable ONNX model. Converted to FormatError."""


class OnnxUnusableError(OnnxError):
    """Internal: the bytes are an ONNX model, but one that cannot be packaged as is."""


MAX_LISTED = 1024


def _value_info(vi: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": vi.name}
    t = vi.type
    if t.HasField("tensor_type"):
        out["elem_type"] = int(t.tensor_type.elem_type)
        if t.tensor_type.HasField("shape"):
            out["shape"] = [
                d.dim_param if d.HasField("dim_param") else int(d.dim_value)
                for d in t.tensor_type.shape.dim
            ]
    return out


def parse_onnx(data: bytes) -> dict[str, Any]:
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError as exc:  # pragma: no cover - onnx is a core dependency
        raise OnnxError("the 'onnx' package is not installed") from exc
    try:
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OnnxError(f"not a protobuf ModelProto: {exc}") from exc
    except Exception as exc:
        raise OnnxError(f"not a protobuf ModelProto: {exc}") from exc
    try:
        return _inspect(onnx, model)
    except OnnxError:
        raise
    except Exception as exc:  # e.g. invalid UTF-8 in a string field surfaces as bytes
        raise OnnxUnusableError(f"malformed ONNX model: {exc!r}") from exc


def _inspect(onnx: Any, model: Any) -> dict[str, Any]:
    if model.ir_version <= 0:
        raise OnnxError("no ir_version: not an ONNX model")
    if not model.HasField("graph"):
        raise OnnxError("no graph: not an ONNX model")
    if model.ir_version >= 3 and not model.opset_import:
        raise OnnxError("no opset_import: not an ONNX model")
    g = model.graph
    for init in g.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise OnnxUnusableError(
                f"initializer {init.name!r} is stored in an external data file; save the model "
                "as one file (onnx.save_model(..., save_as_external_data=False)) to package it"
            )
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        opsets[o.domain or "ai.onnx"] = int(o.version)
    ops = sorted({(n.domain or "ai.onnx", n.op_type) for n in g.node})
    return {
        "ir_version": int(model.ir_version),
        "opsets": opsets,
        "producer_name": model.producer_name,
        "producer_version": model.producer_version,
        "domain": model.domain,
        "model_version": int(model.model_version),
        "graph_name": g.name,
        "nodes": len(g.node),
        "ops": [f"{d}:{t}" if d != "ai.onnx" else t for d, t in ops][:MAX_LISTED],
        "inputs": [_value_info(v) for v in g.input[:MAX_LISTED]],
        "outputs": [_value_info(v) for v in g.output[:MAX_LISTED]],
    }
