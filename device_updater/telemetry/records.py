"""The records the inference app sends to the daemon (one JSON object per line).

::

    {"type": "inference", "model": "clf", "latency_ms": 3.2, "prediction": 4,
     "confidence": 0.91, "features": [0.1, 2.0], "prediction_id": "f81d", "version": "1.2.0"}
    {"type": "error", "model": "clf", "message": "CUDA OOM"}
    {"type": "feedback", "prediction_id": "f81d", "label": 4}
    {"type": "accuracy", "model": "clf", "labelled": 50, "correct": 47}

``prediction`` is a class id (int: classification) or a score (float: regression/anomaly).
``features`` is the model's input summary in the order of its reference profile (raw columns
when the input has at most 32 values, else the per-sample summary of
:func:`device_updater.telemetry.client.summarise`). Everything here is hostile input from a
local process: :func:`parse_record` checks every field and raises :class:`RecordError`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from device_updater.errors import UntrustedDeviceInputError
from edgepkg.protocol import MODEL_NAME_RE, REPORTED_VERSION_RE
from edgepkg.protocol._telemetry import MAX_CLASSES, MAX_FEATURES

MAX_LINE_BYTES = 8192
MAX_COUNT = 10**9
PREDICTION_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RecordError(UntrustedDeviceInputError):
    """A record from the inference app is malformed (it is dropped and counted)."""


@dataclass(frozen=True, slots=True)
class Inference:
    model: str
    latency_ms: float | None = None
    prediction: int | float | None = None
    confidence: float | None = None
    features: tuple[float, ...] = ()
    prediction_id: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class InferenceError:
    model: str
    count: int = 1
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Feedback:
    prediction_id: str
    label: int | float


@dataclass(frozen=True, slots=True)
class Accuracy:
    model: str
    labelled: int
    correct: int
    version: str | None = None


Record = Inference | InferenceError | Feedback | Accuracy

_FIELDS = {
    "inference": {"type", "model", "latency_ms", "prediction", "confidence", "features",
                  "prediction_id", "version"},
    "error": {"type", "model", "message", "count", "version"},
    "feedback": {"type", "prediction_id", "label"},
    "accuracy": {"type", "model", "labelled", "correct", "version"},
}


def _fail(message: str) -> RecordError:
    return RecordError(message)


def _model(obj: dict[str, Any]) -> str:
    m = obj.get("model")
    if not isinstance(m, str) or not MODEL_NAME_RE.match(m):
        raise _fail("model must be a model name ([A-Za-z0-9._-], at most 200 characters)")
    return m


def _version(obj: dict[str, Any]) -> str | None:
    v = obj.get("version")
    if v is None:
        return None
    if not isinstance(v, str) or not REPORTED_VERSION_RE.match(v):
        raise _fail("version must be a version string such as 1.2.0")
    return v


def _num(value: Any, name: str, *, lo: float = -1e15, hi: float = 1e15) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(float(value)) or not lo <= float(value) <= hi:
        raise _fail(f"{name} must be a finite number in [{lo:g}, {hi:g}]")
    return float(value)


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise _fail(f"{name} must be an integer in [0, {MAX_COUNT}]")
    return value


def _label(value: Any, name: str) -> int | float:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < MAX_CLASSES:
            raise _fail(f"{name} as a class id must be in [0, {MAX_CLASSES})")
        return value
    out = _num(value, name)
    if out is None:
        raise _fail(f"{name} is required")
    return out


def _pid(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not PREDICTION_ID_RE.match(value):
        raise _fail("prediction_id must be 1-64 characters of [A-Za-z0-9._:-]")
    return value


def parse_record(line: bytes | str) -> Record:
    """One line from the app -> a typed record; :class:`RecordError` if anything is off."""
    if len(line) > MAX_LINE_BYTES:
        raise _fail(f"record longer than {MAX_LINE_BYTES} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _fail("record is not JSON") from None
    if not isinstance(obj, dict):
        raise _fail("record must be a JSON object")
    kind = obj.get("type")
    if kind not in _FIELDS:
        raise _fail(f"record type must be one of {sorted(_FIELDS)}")
    extra = set(obj) - _FIELDS[kind]
    if extra:
        raise _fail(f"unknown fields in a {kind} record: {', '.join(sorted(map(str, extra)))}")
    if kind == "inference":
        feats = obj.get("features") or []
        if not isinstance(feats, list) or len(feats) > MAX_FEATURES:
            raise _fail(f"features must be a list of at most {MAX_FEATURES} numbers")
        pred = obj.get("prediction")
        return Inference(
            model=_model(obj),
            latency_ms=_num(obj.get("latency_ms"), "latency_ms", lo=0.0, hi=3.6e6),
            prediction=None if pred is None else _label(pred, "prediction"),
            confidence=_num(obj.get("confidence"), "confidence", lo=0.0, hi=1.0),
            features=tuple(float(_num(f, "features[]") or 0.0) for f in feats),
            prediction_id=_pid(obj.get("prediction_id")), version=_version(obj))
    if kind == "error":
        msg = obj.get("message")
        if msg is not None and not isinstance(msg, str):
            raise _fail("message must be a string")
        count = obj.get("count", 1)
        return InferenceError(model=_model(obj), count=_count(count, "count"),
                              version=_version(obj))
    if kind == "feedback":
        pid = _pid(obj.get("prediction_id"))
        if pid is None:
            raise _fail("feedback needs the prediction_id of the prediction it labels")
        return Feedback(prediction_id=pid, label=_label(obj.get("label"), "label"))
    labelled, correct = _count(obj.get("labelled"), "labelled"), _count(obj.get("correct"),
                                                                        "correct")
    if correct > labelled:
        raise _fail("correct cannot exceed labelled")
    return Accuracy(model=_model(obj), labelled=labelled, correct=correct,
                    version=_version(obj))
