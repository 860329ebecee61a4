"""The validation policy: one schema, shared by the release side and the device (pure, stdlib).

The packager writes a policy into the signed manifest (``edgepkg package --policy FILE.toml``
or the ``--policy-*`` shorthands); the device parses the same dict with :func:`parse_policy`
and judges a candidate model with it. The key names are a contract release pipelines rely on::

    metric = "top1_accuracy"   # macro_f1, agreement (classification); mae, rmse (regression);
                               # auroc (anomaly scores); map50 (object detection)
    min = 0.70                 # absolute floor (for mae/rmse: absolute ceiling)
    max_regression = 0.02      # largest allowed worsening vs the running model, metric units
    max_latency_ratio = 1.5    # candidate / running model invoke time (interleaved A/B runs)
    max_latency_ms = 25.0      # p95 of invoke, absolute
    max_memory_ratio = 2.0     # runner peak memory over its baseline, vs the running model
    max_memory_bytes = 268435456
    max_model_bytes = 104857600
    output = "probabilities"   # which output to score when a model has several (optional)
    [per_class]                # classification: classes with >= min_support holdout samples
    min_recall = 0.3
    max_recall_drop = 0.2
    min_precision = 0.0
    min_support = 10
    [[slices]]                 # one table per slice tag of the holdout's slices.npz
    tag = "night"
    min = 0.6
    max_regression = 0.2
    [io]
    must_match_running = true  # input/output names, dtypes, shapes and class count
    [statistics]
    mode = "threshold"         # or "significant" (a drop must also be significant at alpha)
    alpha = 0.05
    [detection]                # output names of a detector (defaults shown)
    boxes = "boxes"
    scores = "scores"
    classes = "classes"

Old manifests carry only ``metric``/``min``/``max_regression``/``max_latency_ratio``; they parse
to the same meaning as before (every other rule off, the I/O contract on).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgepkg.errors import UntrustedInputError

__all__ = [
    "LOWER_IS_BETTER",
    "METRICS",
    "POLICY_KEYS",
    "DetectionOutputs",
    "IoRule",
    "PerClassRule",
    "Policy",
    "PolicySchemaError",
    "SliceRule",
    "StatisticsRule",
    "parse_policy",
    "task_of",
]

#: metric -> task type it needs (the holdout's labels and the model's outputs follow from it).
METRICS: dict[str, str] = {
    "top1_accuracy": "classification",
    "accuracy": "classification",  # old alias of top1_accuracy
    "macro_f1": "classification",
    "agreement": "classification",  # share of samples where candidate and running model agree
    "mae": "regression",
    "rmse": "regression",
    "auroc": "anomaly",
    "map50": "detection",
}
#: Metrics where smaller is better: ``min`` is then a ceiling and a regression is an increase.
LOWER_IS_BETTER = frozenset({"mae", "rmse"})

_NUMBER_KEYS = ("min", "max_regression", "max_latency_ratio", "max_latency_ms",
                "max_memory_ratio")
_INT_KEYS = ("max_memory_bytes", "max_model_bytes")
_TABLES = ("per_class", "slices", "io", "statistics", "detection")
POLICY_KEYS = ("metric", *_NUMBER_KEYS, *_INT_KEYS, "output", *_TABLES)
LEGACY_KEYS = ("metric", "min", "max_regression", "max_latency_ratio")
MAX_SLICES = 64
_NAME_MAX = 128


class PolicySchemaError(UntrustedInputError):
    """A validation policy does not follow the schema (unknown key, wrong type, bad range)."""


def task_of(metric: str) -> str:
    return METRICS[metric]


@dataclass(frozen=True)
class PerClassRule:
    min_recall: float | None = None
    max_recall_drop: float | None = None
    min_precision: float | None = None
    min_support: int = 10


@dataclass(frozen=True)
class SliceRule:
    tag: str
    min: float | None = None
    max_regression: float | None = None


@dataclass(frozen=True)
class IoRule:
    must_match_running: bool = True


@dataclass(frozen=True)
class StatisticsRule:
    mode: str = "threshold"
    alpha: float = 0.05


@dataclass(frozen=True)
class DetectionOutputs:
    boxes: str = "boxes"
    scores: str = "scores"
    classes: str = "classes"


@dataclass(frozen=True)
class Policy:
    """A parsed policy. Field order keeps the old four-field constructor working."""

    metric: str = "top1_accuracy"
    min: float | None = None
    max_regression: float | None = None
    max_latency_ratio: float | None = None
    max_latency_ms: float | None = None
    max_memory_ratio: float | None = None
    max_memory_bytes: int | None = None
    max_model_bytes: int | None = None
    output: str | None = None
    per_class: PerClassRule | None = None
    slices: tuple[SliceRule, ...] = ()
    io: IoRule = field(default_factory=IoRule)
    statistics: StatisticsRule = field(default_factory=StatisticsRule)
    detection: DetectionOutputs = field(default_factory=DetectionOutputs)

    @property
    def task(self) -> str:
        return METRICS.get(self.metric, "classification")

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    @property
    def is_empty(self) -> bool:
        return self.to_dict() in ({}, {"metric": self.metric})

    def to_dict(self) -> dict[str, Any]:
        """The manifest form: only keys that were set, tables only when not default."""
        out: dict[str, Any] = {"metric": self.metric}
        for key in (*_NUMBER_KEYS, *_INT_KEYS, "output"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.per_class is not None:
            pc = self.per_class
            out["per_class"] = {k: v for k, v in (
                ("min_recall", pc.min_recall), ("max_recall_drop", pc.max_recall_drop),
                ("min_precision", pc.min_precision), ("min_support", pc.min_support),
            ) if v is not None}
        if self.slices:
            out["slices"] = [{k: v for k, v in (("tag", s.tag), ("min", s.min),
                                                 ("max_regression", s.max_regression))
                              if v is not None} for s in self.slices]
        if self.io != IoRule():
            out["io"] = {"must_match_running": self.io.must_match_running}
        if self.statistics != StatisticsRule():
            out["statistics"] = {"mode": self.statistics.mode, "alpha": self.statistics.alpha}
        if self.detection != DetectionOutputs():
            out["detection"] = {"boxes": self.detection.boxes, "scores": self.detection.scores,
                                "classes": self.detection.classes}
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Policy:
        return parse_policy(data)


def _number(where: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicySchemaError(f"policy {where} must be a finite number, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise PolicySchemaError(f"policy {where} must be {'> 0' if positive else '>= 0'}")
    return float(value)


def _integer(where: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PolicySchemaError(f"policy {where} must be an integer >= {minimum}, not {value!r}")
    return value


def _name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > _NAME_MAX:
        raise PolicySchemaError(f"policy {where} must be a name of 1-{_NAME_MAX} characters")
    return value


def _table(where: str, value: Any, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicySchemaError(f"policy [{where}] must be a table")
    unknown = set(value) - set(keys)
    if unknown:
        raise PolicySchemaError(f"unknown keys {sorted(unknown)} in policy [{where}]; "
                                f"allowed: {list(keys)}")
    return value


def _opt(table: Mapping[str, Any], key: str, where: str) -> float | None:
    v = table.get(key)
    return None if v is None else _number(f"{where}.{key}", v)


def parse_policy(data: Mapping[str, Any] | None, *, strict_metric: bool = True) -> Policy:
    """Parse a policy dict (manifest JSON or TOML); raise :class:`PolicySchemaError`.

    ``strict_metric=False`` accepts an unknown metric name (old manifests could carry any name;
    the device then rejects the candidate with the reason instead of the manifest failing).
    """
    if data is None:
        return Policy()
    if not isinstance(data, Mapping):
        raise PolicySchemaError("validation policy must be a table/object")
    unknown = set(data) - set(POLICY_KEYS)
    if unknown:
        raise PolicySchemaError(f"unknown validation policy keys {sorted(unknown)}; "
                                f"allowed: {list(POLICY_KEYS)}")
    metric = data.get("metric") or "top1_accuracy"
    if not isinstance(metric, str):
        raise PolicySchemaError("policy metric must be a name such as top1_accuracy")
    if strict_metric and metric not in METRICS:
        raise PolicySchemaError(f"unknown validation metric {metric!r}; known: {sorted(METRICS)}")
    kw: dict[str, Any] = {"metric": metric}
    for key in _NUMBER_KEYS:
        if data.get(key) is not None:
            kw[key] = _number(key, data[key], positive=key in ("max_latency_ratio",
                                                               "max_memory_ratio",
                                                               "max_latency_ms"))
    for key in _INT_KEYS:
        if data.get(key) is not None:
            kw[key] = _integer(key, data[key], minimum=1)
    if data.get("output") is not None:
        kw["output"] = _name("output", data["output"])
    if data.get("per_class") is not None:
        t = _table("per_class", data["per_class"],
                   ("min_recall", "max_recall_drop", "min_precision", "min_support"))
        kw["per_class"] = PerClassRule(
            min_recall=_opt(t, "min_recall", "per_class"),
            max_recall_drop=_opt(t, "max_recall_drop", "per_class"),
            min_precision=_opt(t, "min_precision", "per_class"),
            min_support=_integer("per_class.min_support", t.get("min_support", 10), minimum=1),
        )
    if data.get("slices") is not None:
        raw = data["slices"]
        if not isinstance(raw, list | tuple) or len(raw) > MAX_SLICES:
            raise PolicySchemaError(f"policy slices must be a list of at most {MAX_SLICES} tables")
        slices, seen = [], set()
        for i, item in enumerate(raw):
            t = _table(f"slices {i}", item, ("tag", "min", "max_regression"))
            tag = _name(f"slices[{i}].tag", t.get("tag"))
            if tag in seen:
                raise PolicySchemaError(f"policy slice tag {tag!r} appears twice")
            seen.add(tag)
            slices.append(SliceRule(tag, _opt(t, "min", f"slices[{i}]"),
                                    _opt(t, "max_regression", f"slices[{i}]")))
        kw["slices"] = tuple(slices)
    if data.get("io") is not None:
        t = _table("io", data["io"], ("must_match_running",))
        mm = t.get("must_match_running", True)
        if not isinstance(mm, bool):
            raise PolicySchemaError("policy io.must_match_running must be true or false")
        kw["io"] = IoRule(mm)
    if data.get("statistics") is not None:
        t = _table("statistics", data["statistics"], ("mode", "alpha"))
        mode = t.get("mode", "threshold")
        if mode not in ("threshold", "significant"):
            raise PolicySchemaError("policy statistics.mode must be 'threshold' or 'significant'")
        alpha = _number("statistics.alpha", t.get("alpha", 0.05))
        if not 0 < alpha < 0.5:
            raise PolicySchemaError("policy statistics.alpha must be between 0 and 0.5")
        kw["statistics"] = StatisticsRule(str(mode), alpha)
    if data.get("detection") is not None:
        t = _table("detection", data["detection"], ("boxes", "scores", "classes"))
        d = DetectionOutputs()
        kw["detection"] = DetectionOutputs(
            *(_name(f"detection.{k}", t.get(k, getattr(d, k)))
              for k in ("boxes", "scores", "classes")))
    return Policy(**kw)
