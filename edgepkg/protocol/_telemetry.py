"""Field telemetry a device sends about its models and hardware: fixed-size summaries.

One :class:`TelemetryReport` covers one interval on one device. It carries aggregates only
(counts, histograms over fixed bucket edges, moments): raw inputs never travel in it, and its
size is bounded whatever the traffic, so a per-device byte budget holds. ``seq`` increases per
device so a report resent after a power cut or an offline period is stored once.

Histograms use edges both sides agree on: latency edges are :data:`LATENCY_EDGES_MS`; input
feature and score histograms carry their own edges (taken from the model's reference profile,
recorded on the device at install time), so the server can add them across a cohort when the
edges match.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgepkg.errors import ProtocolError
from edgepkg.protocol._messages import MODEL_NAME_RE, REPORTED_VERSION_RE, parse_time

Json = dict[str, Any]

LATENCY_EDGES_MS: tuple[float, ...] = (
    0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
)
"""Upper bucket edges of the latency histogram (ms); one more bucket counts everything above."""

MAX_MODELS = 16
MAX_BINS = 64
MAX_CLASSES = 1000
MAX_FEATURES = 32
MAX_COUNT = 2**53  # exact in a JSON double
FEATURE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
DRIFT_KEYS = ("psi", "js", "ks", "confidence_drop", "prediction_shift")
HARDWARE_KEYS = (
    "cpu_temp_c", "gpu_temp_c", "mem_used_bytes", "mem_total_bytes", "disk_free_bytes",
    "disk_total_bytes", "load1", "uptime_s",
)


def _need(cond: bool, message: str, where: str) -> None:
    if not cond:
        raise ProtocolError(message, field=where)


def _count(value: Any, where: str) -> int:
    _need(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT,
          f"{where} must be a count (0..2^53)", where)
    return int(value)


def _number(value: Any, where: str, *, nullable: bool = True) -> float | None:
    if value is None and nullable:
        return None
    _need(not isinstance(value, bool) and isinstance(value, int | float)
          and math.isfinite(float(value)) and abs(float(value)) <= 1e15,
          f"{where} must be a finite number", where)
    return float(value)


def _object(raw: Any, where: str) -> Mapping[str, Any]:
    _need(isinstance(raw, dict), f"{where} must be a JSON object", where)
    return raw  # type: ignore[no-any-return]


def _only(obj: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = set(obj) - set(allowed)
    _need(not unknown, f"{where} has unknown fields: {', '.join(sorted(map(str, unknown)))}",
          where)


@dataclass(frozen=True, slots=True)
class Histogram:
    """Counts over buckets: ``counts[i]`` counts values <= ``edges[i]`` (and above the previous
    edge); ``counts[-1]`` counts values above the last edge, so ``len(counts) == len(edges)+1``."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def to_json(self) -> Json:
        return {"edges": list(self.edges), "counts": list(self.counts)}


def parse_histogram(raw: Any, where: str) -> Histogram:
    obj = _object(raw, where)
    _only(obj, ("edges", "counts"), where)
    edges: Any = obj.get("edges")
    counts: Any = obj.get("counts")
    _need(isinstance(edges, list) and 1 <= len(edges) <= MAX_BINS,
          f"{where}.edges must be a list of 1..{MAX_BINS} numbers", f"{where}.edges")
    _need(isinstance(counts, list) and len(counts) == len(edges) + 1,
          f"{where}.counts must have one more entry than edges", f"{where}.counts")
    e = tuple(float(_number(x, f"{where}.edges", nullable=False) or 0.0) for x in edges)
    _need(all(a < b for a, b in itertools.pairwise(e)), f"{where}.edges must increase",
          f"{where}.edges")
    return Histogram(edges=e, counts=tuple(_count(c, f"{where}.counts") for c in counts))


@dataclass(frozen=True, slots=True)
class Moments:
    """Count, mean, standard deviation, min and max of a stream of numbers."""

    count: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None

    def to_json(self) -> Json:
        return {"count": self.count, "mean": self.mean, "std": self.std, "min": self.min,
                "max": self.max}


def parse_moments(raw: Any, where: str) -> Moments:
    obj = _object(raw, where)
    _only(obj, ("count", "mean", "std", "min", "max"), where)
    stats = {k: _number(obj.get(k), f"{where}.{k}") for k in ("mean", "std", "min", "max")}
    return Moments(count=_count(obj.get("count", 0), f"{where}.count"), **stats)


@dataclass(frozen=True, slots=True)
class FeatureSummary:
    """One input feature (or embedding dimension) over the interval."""

    name: str
    moments: Moments
    histogram: Histogram | None = None

    def to_json(self) -> Json:
        return {"name": self.name, "moments": self.moments.to_json(),
                "histogram": self.histogram.to_json() if self.histogram else None}


@dataclass(frozen=True, slots=True)
class ModelTelemetry:
    """What one model did during the interval on this device."""

    version: str
    inferences: int = 0
    errors: int = 0
    latency_ms: Histogram | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    class_counts: tuple[int, ...] = ()
    """Predictions per class id (classification); empty for other tasks."""
    scores: Moments | None = None
    """Output score statistics (regression / anomaly score)."""
    confidence: Moments | None = None
    """Top-1 confidence statistics (classification)."""
    features: tuple[FeatureSummary, ...] = ()
    feedback_labelled: int = 0
    feedback_correct: int = 0
    drift: Mapping[str, float] = field(default_factory=dict)
    """Drift scores against the reference profile, computed on the device (see DRIFT_KEYS)."""

    @property
    def field_accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback_labelled if self.feedback_labelled else None

    def to_json(self) -> Json:
        return {
            "version": self.version, "inferences": self.inferences, "errors": self.errors,
            "latency_ms": self.latency_ms.to_json() if self.latency_ms else None,
            "latency_p50_ms": self.latency_p50_ms, "latency_p95_ms": self.latency_p95_ms,
            "class_counts": list(self.class_counts),
            "scores": self.scores.to_json() if self.scores else None,
            "confidence": self.confidence.to_json() if self.confidence else None,
            "features": [f.to_json() for f in self.features],
            "feedback": {"labelled": self.feedback_labelled, "correct": self.feedback_correct},
            "drift": dict(self.drift),
        }


_MODEL_FIELDS = ("version", "inferences", "errors", "latency_ms", "latency_p50_ms",
                 "latency_p95_ms", "class_counts", "scores", "confidence", "features",
                 "feedback", "drift")


def parse_model_telemetry(raw: Any, where: str) -> ModelTelemetry:
    obj = _object(raw, where)
    _only(obj, _MODEL_FIELDS, where)
    version = obj.get("version")
    _need(isinstance(version, str) and bool(REPORTED_VERSION_RE.match(version)),
          f"{where}.version is invalid", f"{where}.version")
    lat = obj.get("latency_ms")
    classes = obj.get("class_counts") or []
    _need(isinstance(classes, list) and len(classes) <= MAX_CLASSES,
          f"{where}.class_counts must be a list of at most {MAX_CLASSES} counts",
          f"{where}.class_counts")
    feats_raw = obj.get("features") or []
    _need(isinstance(feats_raw, list) and len(feats_raw) <= MAX_FEATURES,
          f"{where}.features must be a list of at most {MAX_FEATURES}", f"{where}.features")
    features = []
    for i, f in enumerate(feats_raw):
        at = f"{where}.features[{i}]"
        fo = _object(f, at)
        _only(fo, ("name", "moments", "histogram"), at)
        name = fo.get("name")
        _need(isinstance(name, str) and bool(FEATURE_NAME_RE.match(name)),
              f"{at}.name is invalid", f"{at}.name")
        hist = fo.get("histogram")
        features.append(FeatureSummary(
            name=str(name), moments=parse_moments(fo.get("moments") or {}, f"{at}.moments"),
            histogram=parse_histogram(hist, f"{at}.histogram") if hist is not None else None))
    fb = _object(obj.get("feedback") or {}, f"{where}.feedback")
    _only(fb, ("labelled", "correct"), f"{where}.feedback")
    labelled = _count(fb.get("labelled", 0), f"{where}.feedback.labelled")
    correct = _count(fb.get("correct", 0), f"{where}.feedback.correct")
    _need(correct <= labelled, "feedback.correct cannot exceed feedback.labelled",
          f"{where}.feedback")
    drift_raw = _object(obj.get("drift") or {}, f"{where}.drift")
    _only(drift_raw, DRIFT_KEYS, f"{where}.drift")
    drift = {k: float(_number(v, f"{where}.drift.{k}", nullable=False) or 0.0)
             for k, v in drift_raw.items()}
    scores, conf = obj.get("scores"), obj.get("confidence")
    return ModelTelemetry(
        version=str(version),
        inferences=_count(obj.get("inferences", 0), f"{where}.inferences"),
        errors=_count(obj.get("errors", 0), f"{where}.errors"),
        latency_ms=parse_histogram(lat, f"{where}.latency_ms") if lat is not None else None,
        latency_p50_ms=_number(obj.get("latency_p50_ms"), f"{where}.latency_p50_ms"),
        latency_p95_ms=_number(obj.get("latency_p95_ms"), f"{where}.latency_p95_ms"),
        class_counts=tuple(_count(c, f"{where}.class_counts") for c in classes),
        scores=parse_moments(scores, f"{where}.scores") if scores is not None else None,
        confidence=parse_moments(conf, f"{where}.confidence") if conf is not None else None,
        features=tuple(features),
        feedback_labelled=labelled, feedback_correct=correct, drift=drift,
    )


@dataclass(frozen=True, slots=True)
class HardwareHealth:
    """What the daemon reads itself (None where the device does not expose it)."""

    cpu_temp_c: float | None = None
    gpu_temp_c: float | None = None
    mem_used_bytes: float | None = None
    mem_total_bytes: float | None = None
    disk_free_bytes: float | None = None
    disk_total_bytes: float | None = None
    load1: float | None = None
    uptime_s: float | None = None

    def to_json(self) -> Json:
        return {k: getattr(self, k) for k in HARDWARE_KEYS}


def parse_hardware(raw: Any, where: str = "hardware") -> HardwareHealth:
    obj = _object(raw, where)
    _only(obj, HARDWARE_KEYS, where)
    return HardwareHealth(**{k: _number(obj.get(k), f"{where}.{k}") for k in HARDWARE_KEYS})


@dataclass(frozen=True, slots=True)
class TelemetryReport:
    seq: int
    interval_start: dt.datetime
    interval_end: dt.datetime
    models: Mapping[str, ModelTelemetry] = field(default_factory=dict)
    hardware: HardwareHealth = field(default_factory=HardwareHealth)
    dropped_intervals: int = 0
    """Intervals the device aggregated but could not send within its byte budget."""

    def to_json(self) -> Json:
        return {
            "seq": self.seq,
            "interval_start": self.interval_start.isoformat(),
            "interval_end": self.interval_end.isoformat(),
            "models": {name: m.to_json() for name, m in self.models.items()},
            "hardware": self.hardware.to_json(),
            "dropped_intervals": self.dropped_intervals,
        }


_REPORT_FIELDS = ("seq", "interval_start", "interval_end", "models", "hardware",
                  "dropped_intervals")


def parse_telemetry_report(raw: Any) -> TelemetryReport:
    """Parse one report; raise :class:`ProtocolError` naming the field."""
    obj = _object(raw, "telemetry")
    _only(obj, _REPORT_FIELDS, "telemetry")
    start = parse_time(obj.get("interval_start"), "interval_start")
    end = parse_time(obj.get("interval_end"), "interval_end")
    _need(start <= end, "interval_start must not be after interval_end", "interval_start")
    models_raw = _object(obj.get("models") or {}, "models")
    _need(len(models_raw) <= MAX_MODELS, f"at most {MAX_MODELS} models per report", "models")
    models: dict[str, ModelTelemetry] = {}
    for name, m in models_raw.items():
        _need(isinstance(name, str) and bool(MODEL_NAME_RE.match(name)),
              f"model name {str(name)[:80]!r} is invalid", "models")
        models[name] = parse_model_telemetry(m, f"models[{name!r}]")
    return TelemetryReport(
        seq=_count(obj.get("seq"), "seq"), interval_start=start, interval_end=end,
        models=models, hardware=parse_hardware(obj.get("hardware") or {}),
        dropped_intervals=_count(obj.get("dropped_intervals", 0), "dropped_intervals"),
    )
