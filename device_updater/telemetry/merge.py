"""Adding telemetry reports together: how the device downsamples when over its byte budget.

Two reports of adjacent intervals become one covering both: counts and histograms add, moments
combine exactly (parallel variance formula), p50/p95 are re-read from the merged latency
histogram, feedback adds. Drift scores cannot be recomputed without the reference counts, so
the merged report keeps the larger (worse) score of the two: an alert must not be lost by
merging. A model whose version differs between the two reports cannot be merged (the server
keys metrics by version): :func:`merge_reports` returns None and the caller picks another pair.
"""

from __future__ import annotations

import math

from device_updater.telemetry.aggregate import histogram_quantile
from edgepkg.protocol import (
    FeatureSummary,
    Histogram,
    ModelTelemetry,
    Moments,
    TelemetryReport,
)
from edgepkg.protocol._telemetry import MAX_CLASSES


def _sig(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.6g}")


def merge_moments(a: Moments | None, b: Moments | None) -> Moments | None:
    if a is None or not a.count:
        return b
    if b is None or not b.count:
        return a
    n = a.count + b.count
    ma, mb = a.mean or 0.0, b.mean or 0.0
    mean = (a.count * ma + b.count * mb) / n
    var = (a.count * ((a.std or 0.0) ** 2 + (ma - mean) ** 2)
           + b.count * ((b.std or 0.0) ** 2 + (mb - mean) ** 2)) / n
    lo = [x for x in (a.min, b.min) if x is not None]
    hi = [x for x in (a.max, b.max) if x is not None]
    return Moments(count=n, mean=_sig(mean), std=_sig(math.sqrt(max(var, 0.0))),
                   min=min(lo) if lo else None, max=max(hi) if hi else None)


def merge_histograms(a: Histogram | None, b: Histogram | None) -> Histogram | None:
    """Sum on identical edges; on different edges (a new reference profile) keep the newer."""
    if a is None:
        return b
    if b is None:
        return a
    if a.edges != b.edges:
        return b
    return Histogram(a.edges, tuple(x + y for x, y in zip(a.counts, b.counts, strict=True)))


def _merge_features(a: tuple[FeatureSummary, ...],
                    b: tuple[FeatureSummary, ...]) -> tuple[FeatureSummary, ...]:
    by_name = {f.name: f for f in a}
    out = []
    for f in b:
        old = by_name.pop(f.name, None)
        if old is None:
            out.append(f)
            continue
        out.append(FeatureSummary(
            name=f.name, moments=merge_moments(old.moments, f.moments) or Moments(),
            histogram=merge_histograms(old.histogram, f.histogram)))
    return tuple(list(by_name.values()) + out)


def merge_models(a: ModelTelemetry, b: ModelTelemetry) -> ModelTelemetry | None:
    if a.version != b.version:
        return None
    lat = merge_histograms(a.latency_ms, b.latency_ms)
    n = max(len(a.class_counts), len(b.class_counts))
    ca = list(a.class_counts) + [0] * (n - len(a.class_counts))
    cb = list(b.class_counts) + [0] * (n - len(b.class_counts))
    return ModelTelemetry(
        version=a.version, inferences=a.inferences + b.inferences, errors=a.errors + b.errors,
        latency_ms=lat,
        latency_p50_ms=_sig(histogram_quantile(lat, 0.5)) if lat else None,
        latency_p95_ms=_sig(histogram_quantile(lat, 0.95)) if lat else None,
        class_counts=tuple(x + y for x, y in zip(ca, cb, strict=True))[:MAX_CLASSES],
        scores=merge_moments(a.scores, b.scores),
        confidence=merge_moments(a.confidence, b.confidence),
        features=_merge_features(a.features, b.features),
        feedback_labelled=a.feedback_labelled + b.feedback_labelled,
        feedback_correct=a.feedback_correct + b.feedback_correct,
        drift={k: max(a.drift.get(k, -math.inf), b.drift.get(k, -math.inf))
               for k in set(a.drift) | set(b.drift)},
    )


def merge_reports(a: TelemetryReport, b: TelemetryReport) -> TelemetryReport | None:
    """``a`` (older) and ``b`` (newer) as one report, or None when a model's version differs.
    The merged report takes ``b``'s seq (neither was sent) and ``b``'s hardware snapshot."""
    models = dict(a.models)
    for name, mb in b.models.items():
        ma = models.get(name)
        if ma is None:
            models[name] = mb
            continue
        merged = merge_models(ma, mb)
        if merged is None:
            return None
        models[name] = merged
    return TelemetryReport(
        seq=max(a.seq, b.seq), interval_start=min(a.interval_start, b.interval_start),
        interval_end=max(a.interval_end, b.interval_end), models=models, hardware=b.hardware,
        dropped_intervals=a.dropped_intervals + b.dropped_intervals)
