"""Per-interval aggregation of the app's records into fixed-size :class:`ModelTelemetry`.

Memory and output size are bounded whatever the traffic: counters, a latency histogram on
:data:`~edgepkg.protocol.LATENCY_EDGES_MS`, class counts (at most ``MAX_CLASSES``), running
moments (Welford), per-feature moments and a histogram on the reference profile's edges, and a
bounded LRU of recent prediction ids so that feedback labels can be joined with predictions.
Raw feature values are folded in and forgotten. Pure apart from the clock the caller passes.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from device_updater.telemetry import drift
from device_updater.telemetry.records import (
    Accuracy,
    Feedback,
    Inference,
    InferenceError,
    Record,
)
from device_updater.telemetry.reference import ReferenceProfile
from edgepkg.protocol import LATENCY_EDGES_MS, FeatureSummary, Histogram, ModelTelemetry, Moments
from edgepkg.protocol._telemetry import MAX_CLASSES, MAX_MODELS

FEEDBACK_LRU = 4096  # prediction ids remembered for the feedback join
UNKNOWN_VERSION = "unknown"


def _sig(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.6g}")


@dataclass
class Welford:
    """Running count, mean, variance (population), min and max."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)
        self.lo, self.hi = min(self.lo, x), max(self.hi, x)

    def moments(self) -> Moments:
        if not self.n:
            return Moments()
        return Moments(count=self.n, mean=_sig(self.mean),
                       std=_sig(math.sqrt(max(self.m2, 0.0) / self.n)), min=_sig(self.lo),
                       max=_sig(self.hi))


def bucket(edges: Sequence[float], value: float) -> int:
    """Index of the bucket holding ``value``: ``edges[i-1] < value <= edges[i]``."""
    return bisect.bisect_left(edges, value)


def histogram_quantile(hist: Histogram, q: float, *, lo: float = 0.0,
                       hi: float | None = None) -> float | None:
    """The ``q`` quantile estimated from ``hist`` (linear inside the bucket). ``lo`` is the lower
    bound of the first bucket, ``hi`` the largest value seen (the top of the overflow bucket)."""
    total = hist.total
    if total <= 0:
        return None
    target = q * total
    seen = 0
    for i, c in enumerate(hist.counts):
        if c and seen + c >= target:
            low = hist.edges[i - 1] if i > 0 else lo
            high = hist.edges[i] if i < len(hist.edges) else (hi if hi is not None else low)
            if hi is not None:
                high = min(high, hi)
                low = min(low, high)
            return low + (high - low) * max(0.0, target - seen) / c
        seen += c
    return hist.edges[-1]


@dataclass
class ModelAccumulator:
    version: str
    inferences: int = 0
    errors: int = 0
    latency_counts: list[int] = field(
        default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    latency: Welford = field(default_factory=Welford)
    class_counts: list[int] = field(default_factory=list)
    scores: Welford = field(default_factory=Welford)
    confidence: Welford = field(default_factory=Welford)
    features: list[Welford] = field(default_factory=list)
    feature_counts: list[list[int] | None] = field(default_factory=list)
    labelled: int = 0
    correct: int = 0

    def add_inference(self, rec: Inference, profile: ReferenceProfile | None) -> None:
        self.inferences += 1
        if rec.latency_ms is not None:
            self.latency_counts[bucket(LATENCY_EDGES_MS, rec.latency_ms)] += 1
            self.latency.add(rec.latency_ms)
        if isinstance(rec.prediction, int):
            cid = rec.prediction
            if cid >= len(self.class_counts):
                self.class_counts.extend([0] * (cid + 1 - len(self.class_counts)))
            self.class_counts[cid] += 1
        elif rec.prediction is not None:
            self.scores.add(rec.prediction)
        if rec.confidence is not None:
            self.confidence.add(rec.confidence)
        for i, x in enumerate(rec.features):
            if i >= len(self.features):
                ref = profile.features[i] if profile and i < len(profile.features) else None
                self.features.append(Welford())
                self.feature_counts.append([0] * (len(ref.edges) + 1) if ref else None)
            self.features[i].add(x)
            counts = self.feature_counts[i]
            if counts is not None and profile is not None:
                counts[bucket(profile.features[i].edges, x)] += 1

    def build(self, profile: ReferenceProfile | None,
              min_samples: int = drift.MIN_SAMPLES) -> ModelTelemetry:
        lat = Histogram(LATENCY_EDGES_MS, tuple(self.latency_counts)) if self.latency.n else None
        hi = self.latency.hi if self.latency.n else None
        feats: list[FeatureSummary] = []
        pairs: list[drift.FeatureCounts] = []
        for i, w in enumerate(self.features):
            ref = profile.features[i] if profile and i < len(profile.features) else None
            name = ref.name if ref else f"f{i}"
            counts = self.feature_counts[i]
            hist = Histogram(ref.edges, tuple(counts)) if ref and counts is not None else None
            feats.append(FeatureSummary(name=name, moments=w.moments(), histogram=hist))
            if ref is not None and counts is not None:
                pairs.append(drift.FeatureCounts(ref.counts, counts))
        scores: dict[str, float] = {}
        if profile is not None:
            conf_ref = profile.confidence.mean if profile.confidence else None
            scores = drift.drift_scores(
                pairs, ref_classes=profile.class_counts, field_classes=self.class_counts,
                ref_confidence_mean=conf_ref,
                field_confidence_mean=self.confidence.mean if self.confidence.n else None,
                field_confidence_count=self.confidence.n, min_samples=min_samples)
        return ModelTelemetry(
            version=self.version, inferences=self.inferences, errors=self.errors,
            latency_ms=lat,
            latency_p50_ms=_sig(histogram_quantile(lat, 0.5, hi=hi)) if lat else None,
            latency_p95_ms=_sig(histogram_quantile(lat, 0.95, hi=hi)) if lat else None,
            class_counts=tuple(self.class_counts[:MAX_CLASSES]),
            scores=self.scores.moments() if self.scores.n else None,
            confidence=self.confidence.moments() if self.confidence.n else None,
            features=tuple(feats), feedback_labelled=self.labelled,
            feedback_correct=self.correct, drift=scores)


ProfileLookup = Callable[[str, str], ReferenceProfile | None]
VersionLookup = Callable[[str], str | None]


class Aggregator:
    """Folds records into per-model accumulators; :meth:`close` ends the interval.

    ``version_of(model)`` names the version the daemon runs (records may name it themselves);
    ``profile_of(model, version)`` gives its reference profile (None: no drift scores).
    """

    def __init__(self, version_of: VersionLookup, profile_of: ProfileLookup, *,
                 lru_size: int = FEEDBACK_LRU) -> None:
        self.version_of = version_of
        self.profile_of = profile_of
        self.lru_size = lru_size
        self.models: dict[str, ModelAccumulator] = {}
        self.predictions: OrderedDict[str, tuple[str, int | float | None]] = OrderedDict()
        self.dropped_records = 0  # models over MAX_MODELS, feedback for forgotten ids

    def _acc(self, model: str, version: str | None) -> ModelAccumulator | None:
        acc = self.models.get(model)
        if acc is None:
            if len(self.models) >= MAX_MODELS:
                self.dropped_records += 1
                return None
            acc = ModelAccumulator(version or self.version_of(model) or UNKNOWN_VERSION)
            self.models[model] = acc
        return acc

    def add(self, rec: Record) -> None:
        if isinstance(rec, Feedback):
            self._feedback(rec)
            return
        acc = self._acc(rec.model, rec.version)
        if acc is None:
            return
        if isinstance(rec, Inference):
            acc.add_inference(rec, self.profile_of(rec.model, acc.version))
            if rec.prediction_id is not None:
                self.predictions[rec.prediction_id] = (rec.model, rec.prediction)
                self.predictions.move_to_end(rec.prediction_id)
                while len(self.predictions) > self.lru_size:
                    self.predictions.popitem(last=False)
        elif isinstance(rec, InferenceError):
            acc.errors += rec.count
        elif isinstance(rec, Accuracy):
            acc.labelled += rec.labelled
            acc.correct += rec.correct

    def _feedback(self, rec: Feedback) -> None:
        # A label joins the prediction it names; one that names an id we no longer remember
        # (too old, or never seen) cannot be scored and is only counted as dropped.
        hit = self.predictions.pop(rec.prediction_id, None)
        if hit is None:
            self.dropped_records += 1
            return
        model, predicted = hit
        acc = self._acc(model, None)
        if acc is None:
            return
        acc.labelled += 1
        acc.correct += int(predicted is not None and predicted == rec.label)

    def close(self) -> dict[str, ModelTelemetry]:
        """The interval's summaries (one per model seen); the accumulators start afresh. The
        feedback LRU survives intervals: labels often arrive later than predictions."""
        out = {name: acc.build(self.profile_of(name, acc.version))
               for name, acc in sorted(self.models.items())}
        self.models = {}
        return out
