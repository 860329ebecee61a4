"""Measured results and metric computation (pure)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from device_updater.errors import RunnerFailedError, ValidationError

#: Metrics this device can compute from model outputs and integer labels (higher is better).
METRICS = frozenset({"top1_accuracy", "accuracy"})


@dataclass(frozen=True)
class ValidationResult:
    """One model measured on one holdout set."""

    metric_name: str
    value: float
    latency_p50_ms: float
    latency_p95_ms: float
    n: int
    metrics: dict[str, float] = field(default_factory=dict)
    runtime: str = ""
    version: str | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationResult:
        try:
            r = cls(
                metric_name=str(data["metric_name"]), value=float(data["value"]),
                latency_p50_ms=float(data["latency_p50_ms"]),
                latency_p95_ms=float(data["latency_p95_ms"]), n=int(data["n"]),
                metrics={str(k): float(v) for k, v in dict(data.get("metrics") or {}).items()},
                runtime=str(data.get("runtime") or ""),
                version=data.get("version"), sha256=data.get("sha256"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"malformed validation result: {exc}") from None
        return r


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def compute_metrics(outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics from runner outputs: ``[N, C]`` scores (argmax) or ``[N]`` predicted class ids."""
    n = labels.shape[0]
    if outputs.shape[0] != n:
        raise RunnerFailedError(f"runner returned {outputs.shape[0]} outputs for {n} samples")
    if outputs.dtype.kind not in "biuf":
        raise RunnerFailedError(f"runner outputs must be numeric, not {outputs.dtype}")
    if outputs.ndim == 1:
        pred = outputs.astype(np.int64)
    else:
        flat = outputs.reshape(n, -1)
        if flat.dtype.kind == "f" and not np.isfinite(flat).all():
            raise RunnerFailedError("runner outputs contain NaN or infinity")
        pred = flat.argmax(axis=1)
    acc = float((pred == labels).mean()) if n else math.nan
    return {"top1_accuracy": acc, "accuracy": acc}
