"""Device facts (what this device can run) and the pure requirements check.

Facts come from discovery (platform, installed runtimes) overridden by the config's ``[facts]``
table (TensorRT version and GPU SM on a Jetson, Edge TPU runtime version, TFLM arena size...).

:func:`unmet_requirements` compares a signed manifest's ``requirements`` with the facts and
returns the reasons a model cannot run here (empty list: it can). It fails closed: every key
``edgepkg.formats`` emits (and ``platform``) is checked against a fact, a fact the device does
not have is a reason, and a key this updater does not know is a reason too ("upgrade
edge-updater"), because a signed requirement nobody checked is a model installed blind.

Facts used (config ``[facts]`` overrides discovery):

- ``platform``; ``tensorrt_version`` + ``gpu_sm``; ``edgetpu_runtime`` (int);
- TFLite: ``tflite_runtime_version`` (the TensorFlow Lite runtime level the interpreter
  implements), ``tflite_custom_ops`` (custom op names the app registers);
- TFLM: ``tflm_arena_bytes``, ``model_alignment`` (bytes the model buffer is aligned to),
  ``tflm_ops`` (op names the firmware's resolver registers; without it the tflite-micro
  interpreter's all-ops resolver is assumed when ``tflm_version`` is known);
- ONNX: ``onnx_max_opset``, ``onnx_max_ml_opset``, ``onnx_max_ir_version`` (discovered from the
  installed onnxruntime version), ``onnx_custom_domains`` (other op domains the app registers).
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping
from typing import Any

# onnxruntime release -> (max ai.onnx opset, max ai.onnx.ml opset, max IR version) it loads.
# 1.31 measured here (InferenceSession on an Identity model per opset/IR); older rows from ONNX
# Runtime's docs/Versioning.md. A release between rows gets the row below it: ORT only ever adds
# support, so that is a lower bound (a model may be refused that would load; set the
# onnx_max_* facts in the config to lift it).
_ORT_SUPPORT: tuple[tuple[tuple[int, int], tuple[int, int, int]], ...] = (
    ((1, 31), (26, 5, 13)),
    ((1, 20), (21, 4, 10)),
    ((1, 17), (20, 4, 9)),
    ((1, 16), (19, 3, 9)),
    ((1, 14), (18, 3, 8)),
    ((1, 13), (17, 3, 8)),
    ((1, 11), (16, 2, 8)),
    ((1, 10), (15, 2, 8)),
)
# ai-edge-litert (LiteRT) was split out of TensorFlow after TF 2.16: it runs every model whose
# TFLite min_runtime_version is 2.16.0 or lower (a lower bound; override in the config).
_LITERT_TFLITE_LEVEL = "2.16.0"
# The updater hands the model over as a file (mmap: page aligned) or as a CPython bytes buffer
# (16-byte aligned on 64-bit): TFLM's 16-byte requirement holds. A firmware loader that aligns
# less sets model_alignment in the config.
_DEFAULT_MODEL_ALIGNMENT = 16
# ONNX Runtime's own contrib-op domain (version 1 in every release).
_ORT_CONTRIB_DOMAINS = {"com.microsoft": 1, "com.microsoft.nchwc": 1}


def _ort_support(version: str) -> tuple[int, int, int] | None:
    v = _version_tuple(version.split("+")[0].split("rc")[0].split(".dev")[0])
    if v is None or len(v) < 2:
        return None
    for since, support in _ORT_SUPPORT:
        if v[:2] >= since:
            return support
    return None


def discover_facts() -> dict[str, Any]:
    """Facts this process can find out by itself (cheap, no subprocess)."""
    facts: dict[str, Any] = {
        "platform": f"{platform.system().lower()}-{platform.machine().lower()}",
        "python": platform.python_version(),
    }
    for dist, key in (("onnxruntime", "onnxruntime_version"), ("tensorrt", "tensorrt_version"),
                      ("ai-edge-litert", "litert_version"), ("tflite-micro", "tflm_version"),
                      ("tflite-runtime", "tflite_runtime_version"),
                      ("tensorflow", "tflite_runtime_version")):
        try:
            facts[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    ort = facts.get("onnxruntime_version")
    support = _ort_support(str(ort)) if ort else None
    if support is not None:
        (facts["onnx_max_opset"], facts["onnx_max_ml_opset"],
         facts["onnx_max_ir_version"]) = support
    if "litert_version" in facts and "tflite_runtime_version" not in facts:
        facts["tflite_runtime_version"] = _LITERT_TFLITE_LEVEL
    facts["model_alignment"] = _DEFAULT_MODEL_ALIGNMENT
    return facts


def device_facts(config_facts: Mapping[str, Any]) -> dict[str, Any]:
    facts = discover_facts()
    facts.update(dict(config_facts))
    return facts


def _version_tuple(v: Any) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in str(v).split(".") if p != "")
    except ValueError:
        return None


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    try:
        return int(str(v).removeprefix("sm_").removeprefix("sm"))
    except ValueError:
        return None


def _ints(v: Any) -> tuple[int, ...] | None:
    return _version_tuple(v) if isinstance(v, (str, int)) and not isinstance(v, bool) else None


def _names(v: Any) -> list[str] | None:
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return list(v)
    return None


def _need_at_most(reasons: list[str], what: str, want: Any, have: Any, missing: str) -> None:
    w, h = _int(want), _int(have)
    if h is None:
        reasons.append(f"needs {what} {want}, but {missing}")
    elif w is None or w > h:
        reasons.append(f"needs {what} {want}, device supports up to {h}")


def _check_platform(want: Any, facts: Mapping[str, Any]) -> list[str]:
    have = facts.get("platform")
    allowed = want if isinstance(want, list) else [want]
    return [] if have in allowed else [f"needs platform {want}, device is {have or 'unknown'}"]


def _check_tensorrt(want: Any, facts: Mapping[str, Any]) -> list[str]:
    have = facts.get("tensorrt_version")
    w, h = _version_tuple(want), _version_tuple(have)
    if have is None:
        return [f"needs TensorRT {want}, device has no TensorRT"]
    if w is None or h is None or h[:3] != w[:3]:
        return [(f"TensorRT engine built for {want}, device has {have} "
                "(engines only run on the exact version)")]
    return []


def _check_gpu_sm(want: Any, facts: Mapping[str, Any]) -> list[str]:
    have_sm, want_sm = _int(facts.get("gpu_sm")), _int(want)
    if have_sm is None or have_sm != want_sm:
        return [f"engine built for GPU SM {want}, device has {facts.get('gpu_sm', 'no GPU')}"]
    return []


def _check_edgetpu(want: Any, facts: Mapping[str, Any]) -> list[str]:
    have_rt, want_rt = _int(facts.get("edgetpu_runtime")), _int(want)
    if have_rt is None:
        return [f"needs Edge TPU runtime >= {want}, device has none"]
    if want_rt is None or have_rt < want_rt:
        return [f"needs Edge TPU runtime >= {want}, device has {have_rt}"]
    return []


def _check_arena(want: Any, facts: Mapping[str, Any]) -> list[str]:
    have, w = _int(facts.get("tflm_arena_bytes")), _int(want)
    if have is None:
        return [(f"needs a TFLM arena of {want} bytes; the device does not declare its arena "
                "(set tflm_arena_bytes in the config [facts])")]
    if w is None or have < w:
        return [f"needs a TFLM arena of {want} bytes, device has {have}"]
    return []


def _check_alignment(want: Any, facts: Mapping[str, Any]) -> list[str]:
    have, w = _int(facts.get("model_alignment")), _int(want)
    if have is None or w is None or w <= 0 or have % w != 0:
        return [(f"needs the model {want}-byte aligned, device aligns it to "
                f"{facts.get('model_alignment', 'unknown')} bytes")]
    return []


def _custom_op_reasons(ops: list[str], facts: Mapping[str, Any], runtime: str) -> list[str]:
    """``custom:NAME[:ver]`` entries: Edge TPU's op needs the Edge TPU runtime, any other custom
    op must be registered by the app (``tflite_custom_ops``)."""
    registered = set(_names(facts.get("tflite_custom_ops")) or [])
    missing = []
    for op in ops:
        if not op.startswith("custom:"):
            continue
        name = op.split(":")[1]
        if name == "edgetpu-custom-op" and _int(facts.get("edgetpu_runtime")) is not None:
            continue
        if name not in registered:
            missing.append(name)
    if missing:
        return [(f"needs custom {runtime} op(s) {', '.join(sorted(set(missing)))} that this device "
                "does not register (tflite_custom_ops in the config [facts])")]
    return []


def _check_tflite_ops(want: Any, facts: Mapping[str, Any]) -> list[str]:
    ops = _names(want)
    if ops is None:
        return [f"tflite_ops must be a list of op names, got {want!r}"]
    if facts.get("tflite_runtime_version") is None:
        return ["needs a TensorFlow Lite / LiteRT interpreter, device has none"]
    return _custom_op_reasons(ops, facts, "TFLite")


def _check_tflite_runtime(want: Any, facts: Mapping[str, Any]) -> list[str]:
    have = facts.get("tflite_runtime_version")
    w, h = _ints(want), _ints(have)
    if have is None:
        return [f"needs TensorFlow Lite runtime >= {want}, device has none"]
    if w is None or h is None or h < w:
        return [f"needs TensorFlow Lite runtime >= {want}, device's interpreter is at {have}"]
    return []


def _check_tflm_ops(want: Any, facts: Mapping[str, Any]) -> list[str]:
    ops = _names(want)
    if ops is None:
        return [f"tflm_ops must be a list of op names, got {want!r}"]
    registered = _names(facts.get("tflm_ops"))
    if registered is not None:  # the firmware's op resolver: exactly these
        missing = sorted({o.removeprefix("custom:") for o in ops} - set(registered))
        return [(f"needs TFLM op(s) {', '.join(missing)} that the device's op resolver does not "
                "register")] if missing else []
    if facts.get("tflm_version") is None:
        return [("needs a TFLite Micro interpreter, device has none (or set tflm_ops in the "
                "config [facts] to the ops its firmware registers)")]
    return _custom_op_reasons(ops, facts, "TFLM")  # the interpreter's all-ops resolver


def _check_onnx_ir(want: Any, facts: Mapping[str, Any]) -> list[str]:
    reasons: list[str] = []
    _need_at_most(reasons, "ONNX IR version", want, facts.get("onnx_max_ir_version"),
                  "the device has no ONNX Runtime it knows the limits of")
    return reasons


def _check_onnx_opset(want: Any, facts: Mapping[str, Any]) -> list[str]:
    reasons: list[str] = []
    _need_at_most(reasons, "ONNX opset", want, facts.get("onnx_max_opset"),
                  "the device has no ONNX Runtime it knows the limits of")
    return reasons


def _check_onnx_opsets(want: Any, facts: Mapping[str, Any]) -> list[str]:
    entries = _names(want)
    if entries is None:
        return [f"onnx_opsets must be a list of 'domain=version', got {want!r}"]
    custom = set(_names(facts.get("onnx_custom_domains")) or [])
    reasons: list[str] = []
    for entry in entries:
        domain, sep, ver = entry.rpartition("=")
        if not sep:
            reasons.append(f"onnx_opsets entry {entry!r} is not 'domain=version'")
        elif domain in ("", "ai.onnx"):
            _check_onnx_opset_into(reasons, "ONNX opset", ver, facts.get("onnx_max_opset"))
        elif domain == "ai.onnx.ml":
            _check_onnx_opset_into(reasons, "ONNX-ML opset", ver,
                                   facts.get("onnx_max_ml_opset"))
        elif domain in _ORT_CONTRIB_DOMAINS:
            limit = _ORT_CONTRIB_DOMAINS[domain] if facts.get("onnxruntime_version") else None
            _check_onnx_opset_into(reasons, f"{domain} opset", ver, limit)
        elif domain not in custom:
            reasons.append(f"needs ONNX op domain {domain} (version {ver}) that this device does "
                           "not register (onnx_custom_domains in the config [facts])")
    return reasons


def _check_onnx_opset_into(reasons: list[str], what: str, want: Any, have: Any) -> None:
    _need_at_most(reasons, what, want, have,
                  "the device has no ONNX Runtime it knows the limits of")


_CHECKS = {
    "platform": _check_platform,
    "tensorrt": _check_tensorrt,
    "gpu_sm": _check_gpu_sm,
    "edgetpu_runtime": _check_edgetpu,
    "arena_size": _check_arena,
    "alignment": _check_alignment,
    "tflite_ops": _check_tflite_ops,
    "tflite_runtime": _check_tflite_runtime,
    "tflm_ops": _check_tflm_ops,
    "onnx_ir_version": _check_onnx_ir,
    "onnx_opset": _check_onnx_opset,
    "onnx_opsets": _check_onnx_opsets,
}
# Keys known to carry no constraint a device could fail. Empty on purpose: every key
# edgepkg.formats emits today constrains the runtime. Add one here only with a comment saying why
# it cannot make a model unrunnable.
INFORMATIONAL_KEYS: frozenset[str] = frozenset()
KNOWN_KEYS = frozenset(_CHECKS) | INFORMATIONAL_KEYS


def unmet_requirements(requirements: Mapping[str, Any], facts: Mapping[str, Any]) -> list[str]:
    """Reasons the model cannot run on a device with ``facts`` (pure; empty list = fine).

    Fails closed: a requirement this updater does not know is a reason, never ignored.
    """
    reasons: list[str] = []
    for key, want in sorted(requirements.items()):
        check = _CHECKS.get(key)
        if check is not None:
            reasons.extend(check(want, facts))
        elif key not in INFORMATIONAL_KEYS:
            reasons.append(f"requirement {key}={want!r} is not known to this updater, so it "
                           "cannot be checked: upgrade edge-updater")
    return reasons
