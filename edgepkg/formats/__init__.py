"""Model format detection: what a file is (from its bytes, never its name) and what a device needs.

Public API::

    detect(path, *, format="auto", extra_requirements=None) -> ModelInfo
    prepare_payload(path, info, workdir) -> Path      # the file to package
    extract_model_bytes(path, info) -> bytes | None   # TFLM C array -> flatbuffer bytes
    edgepkg.formats.loadcheck.check_load(path, ...)    # load with onnxruntime/LiteRT/TFLM

Formats (``FORMATS``) and the requirement keys each records (values are str | int | list[str]):

- ``tensorrt``: ``ftrt`` magic at 0 (or after an Ultralytics ``[int32 LE len][JSON]`` prefix).
  ``tensorrt`` ("10.3.0", from header bytes 24/25/26) and ``gpu_sm`` (int, e.g. 87). The SM is
  not in the header: it must come from ``extra_requirements`` (CLI ``--require gpu_sm=87``), else
  :class:`UsageError`. Only a bounded prefix (~1 MiB) of the engine is read.
- ``tflite``: ``TFL3`` at offset 4. ``tflite_ops`` (["FULLY_CONNECTED:1", "custom:Foo:1"]) and
  ``tflite_runtime`` (``min_runtime_version`` metadata) when present.
- ``edgetpu``: a TFLite model with the custom op ``edgetpu-custom-op``. ``edgetpu_runtime`` (int,
  the DWN1 package's min_runtime_version), ``tflite_ops``; details: ``edgetpu_ops``,
  ``compiler_version``.
- ``tflm``: the same flatbuffer, or a C/C++ source array holding it (``xxd -i`` or TFLM
  ``generate_cc_arrays`` with ``alignas(16)``). ``tflm_ops`` (names), ``alignment`` (16: TFLM
  needs the model 16-byte aligned; more if the source declares more), ``arena_size`` when a
  ``kTensorArenaSize``-style constant is declared or given. A C array is packaged as the extracted
  flatbuffer bytes (see :func:`prepare_payload`), so the device gets the model, not source code.
  Auto-detection says ``tflm`` only for C sources; a plain flatbuffer is ``tflite`` unless
  ``format="tflm"`` is forced.
- ``onnx``: a ModelProto with ir_version, graph and opset imports. ``onnx_ir_version``,
  ``onnx_opset`` (default domain), ``onnx_opsets`` (["ai.onnx=17", "ai.onnx.ml=3"]).
- ``raw``: only with ``format="raw"``; requirements are exactly ``extra_requirements``.

``extra_requirements`` are merged into the detected ones; a value that contradicts what the file
says (e.g. ``tensorrt=8.6.1`` for a 10.3.0 engine) is a :class:`UsageError`.
Size limits: TFLite/TFLM flatbuffers and ONNX models are parsed whole up to ``MAX_PARSE_BYTES``
(1 GiB), C sources up to ``MAX_C_SOURCE_BYTES`` (256 MiB); beyond that :class:`TooLargeError`.
Malformed input raises :class:`FormatError` (or ``TooLargeError``), never a parser's own error.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepkg._atomic import atomic_write_bytes
from edgepkg.errors import FormatError, TooLargeError, UsageError
from edgepkg.formats import _carray, _onnx, _tensorrt, _tflite
from edgepkg.formats._fbreader import FbError

__all__ = [
    "FORMATS",
    "MAX_C_SOURCE_BYTES",
    "MAX_PARSE_BYTES",
    "TFLM_ALIGNMENT",
    "ModelInfo",
    "detect",
    "extract_model_bytes",
    "prepare_payload",
]

FORMATS = ("tensorrt", "edgetpu", "tflm", "tflite", "onnx", "raw")
MAX_PARSE_BYTES = 1 << 30
MAX_C_SOURCE_BYTES = 256 << 20
TFLM_ALIGNMENT = 16
_SNIFF_BYTES = 64 << 10
_KEY = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")
_INT_KEYS = ("gpu_sm", "arena_size", "edgetpu_runtime", "alignment", "onnx_ir_version",
             "onnx_opset")

Requirement = str | int | list[str]


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`detect` found. ``requirements`` go into the signed manifest."""

    format: str
    requirements: dict[str, Requirement] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


# --- public ----------------------------------------------------------------------------------


def detect(
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    extra_requirements: Mapping[str, str | int] | None = None,
) -> ModelInfo:
    """Identify the model at ``path`` from its bytes and extract its requirements.

    ``format`` is ``"auto"`` or one of :data:`FORMATS`; a forced format is validated against the
    bytes (FormatError when they do not fit). Raises FormatError, TooLargeError, UsageError.
    """
    if format != "auto" and format not in FORMATS:
        raise UsageError(f"unknown format {format!r}; choose auto or one of {', '.join(FORMATS)}")
    extra = _normalize_extra(extra_requirements or {})
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            prefix = f.read(_tensorrt.PREFIX_BYTES)
    except OSError as exc:
        raise UsageError(f"cannot read model file {p}: {exc.strerror or exc}") from exc
    if not p.is_file():
        raise UsageError(f"{p} is not a regular file")

    if format == "raw":
        return ModelInfo("raw", dict(extra), {"size": size})

    fmt, requirements, details = _detect(p, size, prefix, format)
    details["size"] = size
    return ModelInfo(fmt, _merge(fmt, requirements, extra), details)


def extract_model_bytes(path: str | os.PathLike[str], info: ModelInfo) -> bytes | None:
    """The model bytes to package when they differ from the file (a TFLM C array), else None.

    Re-reads and re-checks the file: if it changed since :func:`detect`, FormatError.
    """
    if info.details.get("source") != "c_array":
        return None
    text = _read_text(Path(path), os.path.getsize(path))
    arr = _pick_model_array(text, info.details.get("array_name"))
    if hashlib.sha256(arr.data).hexdigest() != info.details.get("payload_sha256"):
        raise FormatError(f"{path} changed since it was inspected; run the command again")
    return arr.data


def prepare_payload(
    path: str | os.PathLike[str], info: ModelInfo, workdir: str | os.PathLike[str]
) -> Path:
    """The file whose bytes go into the bundle.

    The original ``path`` for every format except a TFLM C/C++ source array, whose extracted
    flatbuffer is written atomically to ``workdir/<stem>.tflite`` (the device loads a flatbuffer,
    not source code; its SHA-256 is ``info.details["payload_sha256"]``).
    """
    data = extract_model_bytes(path, info)
    if data is None:
        return Path(path)
    out = Path(workdir) / (Path(path).stem + ".tflite")
    atomic_write_bytes(out, data)
    return out


# --- detection -------------------------------------------------------------------------------


def _detect(
    p: Path, size: int, prefix: bytes, forced: str
) -> tuple[str, dict[str, Requirement], dict[str, Any]]:
    trt_off = _tensorrt.engine_offset(prefix)
    if trt_off is not None or forced == "tensorrt":
        if forced not in ("auto", "tensorrt"):
            raise FormatError(f"{p} is a TensorRT engine, not {forced}")
        return _tensorrt_info(p, prefix)

    if _tflite.is_tflite(prefix):
        if forced not in ("auto", "tflite", "tflm", "edgetpu"):
            raise FormatError(f"{p} is a TFLite flatbuffer, not {forced}")
        return _tflite_info(p, _read_whole(p, size, "TFLite model"), forced)

    if _carray.looks_like_c_source(prefix[:_SNIFF_BYTES]):
        if forced not in ("auto", "tflm"):
            raise FormatError(
                f"{p} is C/C++ source (a TFLite Micro model array), not {forced}; "
                "use --format tflm or auto"
            )
        return _tflm_source_info(p, size)

    if forced in ("tflite", "tflm", "edgetpu"):
        raise FormatError(f"{p} is not a TFLite flatbuffer (no TFL3 identifier at offset 4)")
    # Protobuf writers emit fields in number order, so an ONNX file starts with ir_version's tag
    # (0x08); auto-detection reads a file whole only then. A forced "onnx" always parses.
    if forced == "onnx" or (forced == "auto" and prefix[:1] == b"\x08"):
        if size > MAX_PARSE_BYTES:
            raise TooLargeError(
                f"{p} is {size} bytes; ONNX models are parsed whole up to "
                f"{MAX_PARSE_BYTES} bytes (use --format raw to package it uninspected)"
            )
        try:
            return _onnx_info(_onnx.parse_onnx(_read_whole(p, size, "ONNX model")))
        except _onnx.OnnxError as exc:
            if forced == "onnx" or isinstance(exc, _onnx.OnnxUnusableError):
                raise FormatError(f"{p} is not a valid ONNX model: {exc}") from exc
    raise FormatError(
        f"{p} is not a recognised model (TensorRT engine, TFLite/Edge TPU flatbuffer, TFLite "
        "Micro C array, ONNX); pass --format raw to package it as opaque bytes"
    )


def _tensorrt_info(p: Path, prefix: bytes) -> tuple[str, dict[str, Requirement], dict[str, Any]]:
    try:
        hdr = _tensorrt.parse_header(prefix)
    except _tensorrt.TensorRTError as exc:
        raise FormatError(f"{p}: {exc}") from exc
    details: dict[str, Any] = {"engine_offset": hdr.engine_offset}
    if hdr.metadata is not None:
        details["ultralytics_metadata"] = hdr.metadata
    return "tensorrt", {"tensorrt": ".".join(str(v) for v in hdr.version)}, details


def _tflite_summary(p: Path, data: bytes) -> _tflite.TfliteSummary:
    try:
        return _tflite.parse_tflite(data)
    except FbError as exc:
        raise FormatError(f"{p} is a malformed TFLite flatbuffer: {exc}") from exc
    except Exception as exc:
        raise FormatError(f"{p} is a malformed TFLite flatbuffer: {exc!r}") from exc


def _tflite_details(s: _tflite.TfliteSummary) -> dict[str, Any]:
    return {
        "schema_version": s.schema_version,
        "description": s.description,
        "subgraphs": s.subgraphs,
        "operators": s.operators,
        "opcodes": [
            {"name": o.name, "builtin_code": o.builtin_code, "custom_code": o.custom_code,
             "version": o.version, "count": o.count}
            for o in s.opcodes
        ],
        "inputs": s.inputs,
        "outputs": s.outputs,
        "metadata": s.metadata_names,
    }


def _tflite_info(
    p: Path, data: bytes, forced: str
) -> tuple[str, dict[str, Requirement], dict[str, Any]]:
    s = _tflite_summary(p, data)
    details = _tflite_details(s)
    req: dict[str, Requirement] = {"tflite_ops": s.op_names()}
    if s.min_runtime_version:
        req["tflite_runtime"] = s.min_runtime_version
    if s.edgetpu is not None:
        if forced in ("tflite", "tflm"):
            raise FormatError(
                f"{p} contains {s.edgetpu['ops']} edgetpu-custom-op operator(s) and needs the "
                f"Edge TPU runtime, not {forced}; use --format edgetpu or auto"
            )
        details["edgetpu_ops"] = s.edgetpu["ops"]
        versions = s.edgetpu["compiler_versions"]
        details["compiler_version"] = versions[0] if len(versions) == 1 else versions
        details["min_runtime_version"] = s.edgetpu["min_runtime_version"]
        req["edgetpu_runtime"] = int(s.edgetpu["min_runtime_version"])
        return "edgetpu", req, details
    if forced == "edgetpu":
        raise FormatError(f"{p} is a TFLite model without an edgetpu-custom-op; not edgetpu")
    if forced == "tflm":
        details["source"] = "flatbuffer"
        return "tflm", _tflm_requirements(s, None, None), details
    return "tflite", req, details


def _tflm_requirements(
    s: _tflite.TfliteSummary, alignment: int | None, arena: int | None
) -> dict[str, Requirement]:
    names = set()
    for o in s.opcodes:
        names.add(f"custom:{o.custom_code}" if o.custom_code is not None else o.name)
    req: dict[str, Requirement] = {
        "tflm_ops": sorted(names),
        "alignment": max(TFLM_ALIGNMENT, alignment or 0),
    }
    if arena is not None:
        req["arena_size"] = arena
    return req


def _pick_model_array(text: str, want: str | None) -> _carray.CArray:
    try:
        arrays = _carray.parse_c_arrays(text)
    except _carray.CArrayError as exc:
        raise FormatError(f"malformed C array: {exc}") from exc
    models = [a for a in arrays if _tflite.is_tflite(a.data)]
    if want is not None:
        models = [a for a in models if a.name == want]
    if not models:
        raise FormatError(
            "the C/C++ source holds no TFLite model array (no TFL3 identifier in any byte array)"
        )
    if len(models) > 1:
        names = ", ".join(a.name for a in models)
        raise FormatError(f"the C/C++ source holds several model arrays ({names}); one per bundle")
    return models[0]


def _tflm_source_info(p: Path, size: int) -> tuple[str, dict[str, Requirement], dict[str, Any]]:
    text = _read_text(p, size)
    arr = _pick_model_array(text, None)
    s = _tflite_summary(p, arr.data)
    if s.edgetpu is not None:
        raise FormatError(f"{p}: the model array contains edgetpu-custom-op; not a TFLM model")
    arena = _carray.declared_arena_size(text)
    details = _tflite_details(s)
    details.update(
        source="c_array",
        array_name=arr.name,
        element_type=arr.element_type,
        declared_alignment=arr.alignment,
        payload_length=len(arr.data),
        payload_sha256=hashlib.sha256(arr.data).hexdigest(),
    )
    if arena is not None:
        details["declared_arena_size"] = arena
    return "tflm", _tflm_requirements(s, arr.alignment, arena), details


def _onnx_info(d: dict[str, Any]) -> tuple[str, dict[str, Requirement], dict[str, Any]]:
    req: dict[str, Requirement] = {"onnx_ir_version": d["ir_version"]}
    if "ai.onnx" in d["opsets"]:
        req["onnx_opset"] = d["opsets"]["ai.onnx"]
    req["onnx_opsets"] = [f"{k}={v}" for k, v in sorted(d["opsets"].items())]
    return "onnx", req, d


# --- helpers ---------------------------------------------------------------------------------


def _read_whole(p: Path, size: int, what: str, limit: int = MAX_PARSE_BYTES) -> bytes:
    if size > limit:
        raise TooLargeError(
            f"{p} is {size} bytes; a {what} is parsed whole up to {limit} bytes "
            "(use --format raw to package it uninspected)"
        )
    try:
        with p.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read model file {p}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise TooLargeError(f"{p} grew beyond {limit} bytes while being read")
    return data


def _read_text(p: Path, size: int) -> str:
    raw = _read_whole(p, size, "C/C++ source file", MAX_C_SOURCE_BYTES)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{p} looks like C/C++ source but is not UTF-8 text") from exc


def _normalize_value(key: str, value: str | int) -> Requirement:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UsageError(f"requirement {key}: value must be a string or integer")
    if key in _INT_KEYS:
        text = str(value).strip().lower()
        if key == "gpu_sm":
            text = text.removeprefix("sm_").removeprefix("sm")
            if re.fullmatch(r"\d\.\d", text):
                text = text.replace(".", "")
        if not re.fullmatch(r"\d{1,10}", text) or int(text) <= 0:
            raise UsageError(f"requirement {key}={value!r}: expected a positive integer")
        return int(text)
    text = str(value)
    if not text or len(text) > 256 or any(ord(c) < 32 for c in text):
        raise UsageError(f"requirement {key}: value must be 1-256 printable characters")
    return text


def _normalize_extra(extra: Mapping[str, str | int]) -> dict[str, Requirement]:
    out: dict[str, Requirement] = {}
    for k, v in extra.items():
        if not isinstance(k, str) or not _KEY.match(k):
            raise UsageError(
                f"requirement name {k!r} must be lower-case letters, digits, '_', '.', '-'"
            )
        out[k] = _normalize_value(k, v)
    return out


def _merge(
    fmt: str, detected: dict[str, Requirement], extra: dict[str, Requirement]
) -> dict[str, Requirement]:
    out = dict(detected)
    for k, v in extra.items():
        if k in out and out[k] != v:
            raise UsageError(
                f"--require {k}={v} contradicts the model file, which says {k}={out[k]}"
            )
        out[k] = v
    if fmt == "tensorrt" and "gpu_sm" not in out:
        raise UsageError(
            "a TensorRT engine only runs on the GPU architecture it was built for, and the file "
            "does not record it: pass --require gpu_sm=NN (e.g. 87 for Jetson Orin, 89 for Ada)"
        )
    return out
