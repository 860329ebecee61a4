"""TFLite flatbuffer parsing (pure: bytes in, plain values out). Also Edge TPU packages.

Schema slots used (tensorflow/compiler/mlir/lite/schema/schema.fbs):
Model: 0 version, 1 operator_codes, 2 subgraphs, 3 description, 4 buffers, 6 metadata.
OperatorCode: 0 deprecated_builtin_code (int8), 1 custom_code, 2 version (=1), 3 builtin_code.
SubGraph: 0 tensors, 1 inputs, 2 outputs, 3 operators, 4 name.
Operator: 0 opcode_index, 5 custom_options, 9 large_custom_options_offset, 10 ..._size.
Tensor: 0 shape, 1 type, 3 name, 4 quantization (QuantizationParameters: 2 scale, 3 zero_point).
Buffer: 0 data, 1 offset, 2 size.  Metadata: 0 name, 1 buffer.
Edge TPU: custom op ``edgetpu-custom-op`` whose custom options are a FlexBuffer map; key "4" is
a ``DWN1`` flatbuffer ``Package``: 0 min_runtime_version (int), 4 compiler_version (string).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flatbuffers import flexbuffers

from edgepkg.formats._fbreader import Buf, FbError, Table
from edgepkg.formats._tflite_enums import BUILTIN_OPERATORS, TENSOR_TYPES

TFLITE_IDENTIFIER = b"TFL3"
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
EDGETPU_PACKAGE_IDENTIFIER = b"DWN1"
CUSTOM_BUILTIN_CODE = 32  # BuiltinOperator.CUSTOM

MAX_OPERATOR_CODES = 4096
MAX_SUBGRAPHS = 4096
MAX_OPERATORS = 2_000_000
MAX_METADATA_VALUE = 4096
MAX_IO_TENSORS = 1024


@dataclass
class OpCode:
    name: str
    builtin_code: int
    custom_code: str | None
    version: int
    count: int = 0


@dataclass
class TfliteSummary:
    schema_version: int
    description: str | None
    opcodes: list[OpCode]
    subgraphs: int
    operators: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    metadata_names: list[str]
    min_runtime_version: str | None
    edgetpu: dict[str, Any] | None = field(default=None)

    def op_names(self) -> list[str]:
        """``NAME:VERSION`` for builtins, ``custom:NAME:VERSION`` for custom ops; sorted, unique."""
        out = set()
        for oc in self.opcodes:
            if oc.custom_code is not None:
                out.add(f"custom:{oc.custom_code}:{oc.version}")
            else:
                out.add(f"{oc.name}:{oc.version}")
        return sorted(out)


def is_tflite(data: bytes) -> bool:
    return len(data) >= 8 and data[4:8] == TFLITE_IDENTIFIER


def _opcode(t: Table) -> OpCode:
    deprecated = t.integer(0, "b", 0)
    builtin = t.integer(3, "i", 0)
    code = max(builtin, deprecated)
    custom = t.string(1)
    version = t.integer(2, "i", 1)
    if code == CUSTOM_BUILTIN_CODE and custom is None:
        raise FbError("CUSTOM operator code without a custom_code name")
    if code != CUSTOM_BUILTIN_CODE:
        custom = None
    name = "CUSTOM" if custom is not None else BUILTIN_OPERATORS.get(code, f"BUILTIN_{code}")
    return OpCode(name=name, builtin_code=code, custom_code=custom, version=version)


def _tensor_info(t: Table) -> dict[str, Any]:
    shape = [int(x) for x in t.scalars(0, "i")]
    info: dict[str, Any] = {
        "name": t.string(3) or "",
        "shape": shape,
        "dtype": TENSOR_TYPES.get(t.integer(1, "b", 0), "UNKNOWN"),
    }
    q = t.table(4)
    if q is not None:
        scales = q.scalars(2, "f")
        zps = q.scalars(3, "q")
        if len(scales) == 1 and len(zps) == 1:
            info["quantization"] = {"scale": float(scales[0]), "zero_point": int(zps[0])}
    return info


def _buffer_bytes(data: bytes, buf: Buf, buffers: list[Table], index: int, limit: int) -> bytes:
    if index >= len(buffers):
        raise FbError(f"metadata refers to buffer {index} of {len(buffers)}")
    b = buffers[index]
    raw = b.blob(0)
    if raw:
        return raw[:limit]
    off, size = b.integer(1, "Q", 0), b.integer(2, "Q", 0)
    if off > 1 and size:
        buf.check(off, size)
        return bytes(data[off : off + min(size, limit)])
    return b""


def _custom_options(data: bytes, buf: Buf, op: Table) -> bytes:
    raw = op.blob(5)
    if raw:
        return raw
    off, size = op.integer(9, "Q", 0), op.integer(10, "Q", 0)
    if off and size:
        buf.check(off, size)
        return bytes(data[off : off + size])
    return b""


def parse_edgetpu_package(options: bytes) -> dict[str, Any]:
    """Custom options of an ``edgetpu-custom-op`` -> ``{min_runtime_version, compiler_version}``."""
    try:
        root = flexbuffers.GetRoot(options)
        if not root.IsMap:
            raise FbError("Edge TPU custom options are not a FlexBuffer map")
        m = root.AsMap
        keys = [k.AsKey if hasattr(k, "AsKey") else str(k) for k in m.Keys]
        if "4" not in keys:
            raise FbError('Edge TPU custom options have no key "4" (the DWN1 package)')
        ref = m["4"]
        if not ref.IsBlob:
            raise FbError('Edge TPU custom options key "4" is not a blob')
        package = bytes(ref.AsBlob)
    except FbError:
        raise
    except Exception as exc:
        raise FbError(f"Edge TPU custom options are not a valid FlexBuffer: {exc}") from exc
    pbuf = Buf(package)
    if pbuf.identifier() != EDGETPU_PACKAGE_IDENTIFIER:
        raise FbError("Edge TPU package does not carry the DWN1 identifier")
    pkg = pbuf.root()
    return {
        "min_runtime_version": pkg.integer(0, "i", 0),
        "compiler_version": pkg.string(4),
    }


def parse_tflite(data: bytes) -> TfliteSummary:
    """Parse a TFLite model. Raises FbError on any malformation."""
    if not is_tflite(data):
        raise FbError("no TFL3 identifier at offset 4")
    buf = Buf(data)
    model = buf.root()
    opcodes = [_opcode(t) for t in _bounded(model.tables(1), MAX_OPERATOR_CODES, "operator codes")]
    buffers = list(_bounded(model.tables(4), 10_000_000, "buffers"))
    subgraphs = list(_bounded(model.tables(2), MAX_SUBGRAPHS, "subgraphs"))
    if not subgraphs:
        raise FbError("the model has no subgraph")
    # A hostile file can point every subgraph (and every operator) at one shared table, so work
    # is done once per *distinct* table (memoised by position) and references only multiply
    # counts: total work stays proportional to the file size, not to the references.
    n_ops = 0
    edgetpu_packages: list[dict[str, Any]] = []
    per_subgraph: dict[int, tuple[dict[int, int], list[dict[str, Any]]]] = {}
    per_operator: dict[int, tuple[int, dict[str, Any] | None]] = {}
    checked_tensors: set[int] = set()
    edgetpu_ops = 0
    for sg in subgraphs:
        if sg.pos not in per_subgraph:
            per_subgraph[sg.pos] = _scan_subgraph(data, buf, sg, opcodes, per_operator)
            _check_tensor_buffers(sg, buffers, checked_tensors)
            edgetpu_packages.extend(per_subgraph[sg.pos][1])  # distinct: same max and versions
        counts, packages = per_subgraph[sg.pos]
        edgetpu_ops += len(packages)
        n_ops += sum(counts.values())
        if n_ops > MAX_OPERATORS:
            raise FbError(f"more than {MAX_OPERATORS} operators")
        for idx, n in counts.items():
            opcodes[idx].count += n

    main = subgraphs[0]
    tensors = list(main.tables(0))

    def io(slot: int) -> list[dict[str, Any]]:
        out = []
        for i in main.scalars(slot, "i")[:MAX_IO_TENSORS]:
            if not 0 <= int(i) < len(tensors):
                raise FbError(f"subgraph input/output refers to tensor {i} of {len(tensors)}")
            out.append(_tensor_info(tensors[int(i)]))
        return out

    inputs, outputs = io(1), io(2)
    metadata_names: list[str] = []
    min_runtime: str | None = None
    for md in _bounded(model.tables(6), 10_000, "metadata entries"):
        name = md.string(0) or ""
        metadata_names.append(name)
        if name == "min_runtime_version":
            raw = _buffer_bytes(data, buf, buffers, md.integer(1, "I", 0), MAX_METADATA_VALUE)
            text = raw.split(b"\x00", 1)[0]
            try:
                min_runtime = text.decode("ascii").strip() or None
            except UnicodeDecodeError as exc:
                raise FbError("min_runtime_version metadata is not ASCII") from exc

    edgetpu = None
    if edgetpu_packages:
        edgetpu = {
            "ops": edgetpu_ops,
            "min_runtime_version": max(p["min_runtime_version"] for p in edgetpu_packages),
            "compiler_versions": sorted({p["compiler_version"] or "" for p in edgetpu_packages}),
        }
    return TfliteSummary(
        schema_version=model.integer(0, "I", 0),
        description=model.string(3),
        opcodes=opcodes,
        subgraphs=len(subgraphs),
        operators=n_ops,
        inputs=inputs,
        outputs=outputs,
        metadata_names=metadata_names,
        min_runtime_version=min_runtime,
        edgetpu=edgetpu,
    )


def _scan_subgraph(
    data: bytes, buf: Buf, sg: Table, opcodes: list[OpCode],
    per_operator: dict[int, tuple[int, dict[str, Any] | None]],
) -> tuple[dict[int, int], list[dict[str, Any]]]:
    """Opcode use counts and Edge TPU packages of one subgraph (operator tables memoised)."""
    counts: dict[int, int] = {}
    packages: list[dict[str, Any]] = []
    for op in _bounded(sg.tables(3), MAX_OPERATORS, "operators in a subgraph"):
        if op.pos not in per_operator:
            idx = op.integer(0, "I", 0)
            if idx >= len(opcodes):
                raise FbError(f"operator refers to opcode {idx} of {len(opcodes)}")
            pkg = None
            if opcodes[idx].custom_code == EDGETPU_CUSTOM_OP:
                pkg = parse_edgetpu_package(_custom_options(data, buf, op))
            per_operator[op.pos] = (idx, pkg)
        idx, pkg = per_operator[op.pos]
        counts[idx] = counts.get(idx, 0) + 1
        if pkg is not None:
            packages.append(pkg)
    return counts, packages


# Bits per element of fixed-size tensor types; STRING, RESOURCE, VARIANT have no fixed size.
_TYPE_BITS: dict[str, int] = {
    "FLOAT32": 32, "FLOAT16": 16, "INT32": 32, "UINT8": 8, "INT64": 64, "BOOL": 8, "INT16": 16,
    "COMPLEX64": 64, "INT8": 8, "FLOAT64": 64, "COMPLEX128": 128, "UINT64": 64, "UINT32": 32,
    "UINT16": 16, "INT4": 4, "BFLOAT16": 16, "INT2": 2, "UINT4": 4, "FLOAT8_E4M3FN": 8,
    "FLOAT8_E5M2": 8,
}


def _buffer_length(b: Table) -> int:
    """Bytes a Buffer holds: its inline data vector, or ``size`` for data stored past 2 GiB."""
    v = b.vector_length(0, 1)
    if v:
        return v
    return b.integer(2, "Q", 0) if b.integer(1, "Q", 0) > 1 else 0


def _check_tensor_buffers(sg: Table, buffers: list[Table], seen: set[int]) -> None:
    """Refuse a constant tensor whose buffer holds fewer bytes than shape x element size.

    TFLite Micro does not check this and reads past the buffer (issue 10). A tensor without
    data (buffer 0 or an empty buffer) is an activation and is not checked; nor are sparse
    tensors (their buffer is compressed) and types without a fixed element size.
    """
    for t in _bounded(sg.tables(0), 10_000_000, "tensors"):
        if t.pos in seen:
            continue
        seen.add(t.pos)
        index = t.integer(2, "I", 0)
        if index == 0 or t.has(6):
            continue
        if index >= len(buffers):
            raise FbError(f"tensor refers to buffer {index} of {len(buffers)}")
        have = _buffer_length(buffers[index])
        bits = _TYPE_BITS.get(TENSOR_TYPES.get(t.integer(1, "b", 0), ""))
        if not have or bits is None:
            continue
        elements = 1
        for d in t.scalars(0, "i"):
            if d < 0:
                raise FbError(f"constant tensor {t.string(3)!r} has a negative dimension {d}")
            elements *= int(d)
            if elements * bits > 8 * (1 << 40):
                break  # already far larger than any buffer: fall through to the refusal
        need = (elements * bits + 7) // 8
        if have < need:
            raise FbError(
                f"tensor {t.string(3)!r} needs {need} bytes (shape x element size) but its "
                f"buffer {index} holds only {have}; a runtime would read past the buffer "
                "(re-export the model)"
            )


def _bounded(it: Any, limit: int, what: str) -> Any:
    for i, x in enumerate(it):
        if i >= limit:
            raise FbError(f"more than {limit} {what}")
        yield x
