"""Device facts (what this device can run) and the pure requirements check.

Facts come from discovery (platform, installed runtimes) overridden by the config's ``[facts]``
table (TensorRT version and GPU SM on a Jetson, Edge TPU runtime version, TFLM arena size...).

:func:`unmet_requirements` compares a signed manifest's ``requirements`` with the facts and
returns the reasons a model cannot run here (empty list: it can). Keys it does not know are
informational (op lists, IR details) and ignored.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping
from typing import Any


def discover_facts() -> dict[str, Any]:
    """Facts this process can find out by itself (cheap, no subprocess)."""
    facts: dict[str, Any] = {
        "platform": f"{platform.system().lower()}-{platform.machine().lower()}",
        "python": platform.python_version(),
    }
    for dist, key in (("onnxruntime", "onnxruntime_version"), ("tensorrt", "tensorrt_version"),
                      ("ai-edge-litert", "litert_version"), ("tflite-micro", "tflm_version")):
        try:
            facts[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        import onnx.defs

        facts["onnx_max_opset"] = int(onnx.defs.onnx_opset_version())
    except (ImportError, AttributeError, ValueError):  # onnx missing: the fact is unknown
        facts.pop("onnx_max_opset", None)
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


def unmet_requirements(requirements: Mapping[str, Any], facts: Mapping[str, Any]) -> list[str]:
    """Reasons the model cannot run on a device with ``facts`` (pure; empty list = fine)."""
    reasons: list[str] = []
    for key, want in sorted(requirements.items()):
        if key == "platform":
            have = facts.get("platform")
            allowed = want if isinstance(want, list) else [want]
            if have not in allowed:
                reasons.append(f"needs platform {want}, device is {have or 'unknown'}")
        elif key == "tensorrt":
            have = facts.get("tensorrt_version")
            w, h = _version_tuple(want), _version_tuple(have)
            if have is None:
                reasons.append(f"needs TensorRT {want}, device has no TensorRT")
            elif w is None or h is None or h[:3] != w[:3]:
                reasons.append(f"TensorRT engine built for {want}, device has {have} "
                               "(engines only run on the exact version)")
        elif key == "gpu_sm":
            have_sm, want_sm = _int(facts.get("gpu_sm")), _int(want)
            if have_sm is None or have_sm != want_sm:
                reasons.append(f"engine built for GPU SM {want}, device has "
                               f"{facts.get('gpu_sm', 'no GPU')}")
        elif key == "edgetpu_runtime":
            have_rt, want_rt = _int(facts.get("edgetpu_runtime")), _int(want)
            if have_rt is None:
                reasons.append(f"needs Edge TPU runtime >= {want}, device has none")
            elif want_rt is None or have_rt < want_rt:
                reasons.append(f"needs Edge TPU runtime >= {want}, device has {have_rt}")
        elif key == "arena_size":
            have_arena, want_arena = _int(facts.get("tflm_arena_bytes")), _int(want)
            if have_arena is not None and (want_arena is None or have_arena < want_arena):
                reasons.append(f"needs a TFLM arena of {want} bytes, device has {have_arena}")
        elif key == "onnx_opset":
            have_op, want_op = _int(facts.get("onnx_max_opset")), _int(want)
            if have_op is not None and (want_op is None or want_op > have_op):
                reasons.append(f"needs ONNX opset {want}, device runtime supports up to {have_op}")
    return reasons
