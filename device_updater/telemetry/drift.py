"""Drift scores of one field interval against the model's reference profile (pure math).

Computed on the device: the reference profile (per-feature bin edges, histograms, output class
distribution and confidence on the holdout) is recorded there at install time, so the device
can score each interval without shipping the profile; the server gets the scores (and the
histograms, which it can add up per cohort on the same edges).

Scores (keys of :data:`edgepkg.protocol.DRIFT_KEYS`):

* ``psi``  Population Stability Index per feature, the maximum over features;
* ``js``   Jensen-Shannon divergence (base 2, 0..1) per feature, the maximum over features;
* ``ks``   Kolmogorov-Smirnov statistic from the binned CDFs, the maximum over features;
* ``confidence_drop``  reference mean top-1 confidence minus the field mean (positive = lower);
* ``prediction_shift`` Jensen-Shannon divergence of the predicted-class distributions.

:data:`DEFAULT_THRESHOLDS` and :class:`Hysteresis` are the defaults the server's alert rules
are meant to use (``bench/drift_false_alarms.py`` measures their false-alarm rate and detection
delay; docs/benchmarks.md, "Field telemetry").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Scores above these raise a drift signal for the interval (see docs/benchmarks.md).
DEFAULT_THRESHOLDS: Mapping[str, float] = {
    "psi": 0.25, "js": 0.05, "ks": 0.15, "confidence_drop": 0.10, "prediction_shift": 0.05,
}
#: Fewer field samples than this in an interval give no drift score (too noisy to mean much).
MIN_SAMPLES = 300
_SMOOTH = 0.5  # additive (Jeffreys) smoothing per bin: an empty bin must not make PSI infinite


def _proportions(counts: Sequence[float], smooth: float = _SMOOTH) -> list[float]:
    total = float(sum(counts)) + smooth * len(counts)
    return [(c + smooth) / total for c in counts]


def _check(ref: Sequence[float], cur: Sequence[float]) -> None:
    if len(ref) != len(cur) or not ref:
        raise ValueError(f"histograms must have the same, non-zero number of bins "
                         f"({len(ref)} vs {len(cur)})")


def psi(ref: Sequence[float], cur: Sequence[float]) -> float:
    """Population Stability Index of ``cur`` against ``ref`` (counts on the same bins)."""
    _check(ref, cur)
    p, q = _proportions(ref), _proportions(cur)
    return sum((b - a) * math.log(b / a) for a, b in zip(p, q, strict=True))


def js(ref: Sequence[float], cur: Sequence[float]) -> float:
    """Jensen-Shannon divergence in bits (0 = same distribution, 1 = disjoint)."""
    _check(ref, cur)
    tr, tc = float(sum(ref)), float(sum(cur))
    if tr <= 0 or tc <= 0:
        return 0.0
    p = [c / tr for c in ref]
    q = [c / tc for c in cur]
    out = 0.0
    for a, b in zip(p, q, strict=True):
        m = (a + b) / 2
        if a > 0:
            out += 0.5 * a * math.log2(a / m)
        if b > 0:
            out += 0.5 * b * math.log2(b / m)
    return max(0.0, min(1.0, out))


def ks(ref: Sequence[float], cur: Sequence[float]) -> float:
    """Largest gap between the two binned CDFs (the KS statistic, evaluated at the edges)."""
    _check(ref, cur)
    tr, tc = float(sum(ref)), float(sum(cur))
    if tr <= 0 or tc <= 0:
        return 0.0
    gap = cr = cc = 0.0
    for a, b in zip(ref, cur, strict=True):
        cr += a / tr
        cc += b / tc
        gap = max(gap, abs(cr - cc))
    return gap


def _pad(a: Sequence[int], b: Sequence[int]) -> tuple[list[int], list[int]]:
    n = max(len(a), len(b))
    return list(a) + [0] * (n - len(a)), list(b) + [0] * (n - len(b))


@dataclass(frozen=True)
class FeatureCounts:
    """One feature's interval histogram next to its reference histogram (same edges)."""

    reference: Sequence[int]
    field: Sequence[int]


def drift_scores(
    features: Sequence[FeatureCounts],
    *,
    ref_classes: Sequence[int] = (),
    field_classes: Sequence[int] = (),
    ref_confidence_mean: float | None = None,
    field_confidence_mean: float | None = None,
    field_confidence_count: int = 0,
    min_samples: int = MIN_SAMPLES,
) -> dict[str, float]:
    """The scores that can be computed from what is given (a key is absent otherwise)."""
    out: dict[str, float] = {}
    usable = [f for f in features
              if sum(f.field) >= min_samples and sum(f.reference) > 0
              and len(f.field) == len(f.reference)]
    if usable:
        out["psi"] = round(max(psi(f.reference, f.field) for f in usable), 6)
        out["js"] = round(max(js(f.reference, f.field) for f in usable), 6)
        out["ks"] = round(max(ks(f.reference, f.field) for f in usable), 6)
    if ref_confidence_mean is not None and field_confidence_mean is not None \
            and field_confidence_count >= min_samples:
        out["confidence_drop"] = round(ref_confidence_mean - field_confidence_mean, 6)
    if sum(field_classes) >= min_samples and sum(ref_classes) > 0:
        a, b = _pad(ref_classes, field_classes)
        out["prediction_shift"] = round(js(a, b), 6)
    return out


@dataclass
class Hysteresis:
    """Open after ``open_after`` consecutive intervals above the threshold, resolve after
    ``resolve_after`` consecutive intervals at or below it (the server's alert rule)."""

    threshold: float
    open_after: int = 3
    resolve_after: int = 3
    open: bool = False
    _above: int = 0
    _below: int = 0

    def update(self, score: float | None) -> str | None:
        """Feed one interval's score (None: no score, keeps the streaks); return ``"open"`` or
        ``"resolve"`` when the alert changes state."""
        if score is None:
            return None
        if score > self.threshold:
            self._above, self._below = self._above + 1, 0
            if not self.open and self._above >= self.open_after:
                self.open = True
                return "open"
        else:
            self._below, self._above = self._below + 1, 0
            if self.open and self._below >= self.resolve_after:
                self.open = False
                return "resolve"
        return None
