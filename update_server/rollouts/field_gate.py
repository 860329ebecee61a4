"""The field gate of a rollout stage: canary cohort vs control cohort, pure (no I/O).

The canary cohort is the rollout's devices that run the new version; the control cohort the
devices the same selector matches that still run the previous version. The service
(:mod:`.service`) reads their field telemetry since the stage began and hands each cohort here
as a :class:`CohortSample`; :func:`evaluate` says pass / fail / wait with a reason a person can
act on, e.g. ``stage 1: canary p95 latency 1.8x control, n=40 vs 160, p<0.01``.

A metric fails only when the effect is larger than the operator's tolerance *and* a one-sided
test says it is unlikely to be chance (p < ``alpha``), so a small noisy canary does not pause a
good release, and a tiny but certain difference does not either:

* per-device values (p95 latency, drift score, mean confidence): Mann-Whitney U with the
  normal approximation and tie correction (robust to the long tails of latency);
* pooled counts (error rate, feedback accuracy): the two-proportion z-test.

scipy is not a dependency; the normal tail comes from :func:`math.erfc`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["pass", "fail", "wait"]


@dataclass(frozen=True)
class FieldGate:
    """What an operator tolerates for the canary (``None``: that metric is not gated)."""

    max_latency_ratio: float | None = None
    max_error_rate_delta: float | None = None
    max_drift_delta: float | None = None
    max_confidence_drop: float | None = None
    max_accuracy_drop: float | None = None
    min_devices: int = 5
    alpha: float = 0.01
    min_soak_s: int = 0

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "max_latency_ratio": self.max_latency_ratio,
            "max_error_rate_delta": self.max_error_rate_delta,
            "max_drift_delta": self.max_drift_delta,
            "max_confidence_drop": self.max_confidence_drop,
            "max_accuracy_drop": self.max_accuracy_drop,
            "min_devices": self.min_devices,
            "alpha": self.alpha,
            "min_soak_s": self.min_soak_s,
        }


@dataclass(frozen=True)
class CohortSample:
    """One cohort's field metrics: one value per device for the per-device metrics, pooled
    counts for the proportions."""

    p95_ms: tuple[float, ...] = ()
    drift: tuple[float, ...] = ()
    confidence: tuple[float, ...] = ()
    inferences: int = 0
    errors: int = 0
    labelled: int = 0
    correct: int = 0
    devices: int = 0


@dataclass(frozen=True)
class GateResult:
    verdict: Verdict
    reason: str
    checks: tuple[dict[str, object], ...] = field(default=())


# --- statistics ------------------------------------------------------------------------------


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(U of ``x``, one-sided p that ``x`` tends to be larger than ``y``).

    Normal approximation with tie correction and a 0.5 continuity correction; fine from about
    5 values per side, which the gate's ``min_devices`` enforces.
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("Mann-Whitney U needs values on both sides")
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    ranks = [0.0] * len(pooled)
    tie_term = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        avg = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[k] = avg
        t = j - i + 1
        tie_term += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, side) in zip(ranks, pooled, strict=True) if side == 0)
    u1 = r1 - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    mean = n1 * n2 / 2.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return u1, 0.5
    z = (u1 - mean - 0.5) / math.sqrt(var)
    return u1, normal_sf(z)


def two_proportion_greater(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """(z, one-sided p that proportion 1 is larger than proportion 2), pooled variance."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError("two-proportion test needs counts on both sides")
    p1, p2 = k1 / n1, k2 / n2
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0 if p1 <= p2 else 0.0
    z = (p1 - p2) / se
    return z, normal_sf(z)


# --- the gate --------------------------------------------------------------------------------


def _p_text(p: float, alpha: float) -> str:
    return f"p<{alpha:g}" if p < alpha else f"p={p:.3g}"


def evaluate(
    gate: FieldGate, canary: CohortSample, control: CohortSample, *, stage_number: int,
    soaked_s: float,
) -> GateResult:
    """Pass, fail (with the reason the rollout pauses with) or wait (not enough evidence yet)."""
    where = f"stage {stage_number}"
    if soaked_s < gate.min_soak_s:
        return GateResult("wait", f"{where}: field gate soaking ({int(soaked_s)} of "
                                  f"{gate.min_soak_s} s)")
    if canary.devices < gate.min_devices or control.devices < gate.min_devices:
        return GateResult(
            "wait",
            f"{where}: waiting for field telemetry: canary n={canary.devices}, control "
            f"n={control.devices}, need {gate.min_devices} each",
        )
    failures: list[str] = []
    checks: list[dict[str, object]] = []
    n_text = f"n={canary.devices} vs {control.devices}"

    def per_device(
        name: str, limit: float | None, a: Sequence[float], b: Sequence[float],
        effect: float | None, describe: str, worse_is_larger: bool,
    ) -> None:
        if limit is None or len(a) < gate.min_devices or len(b) < gate.min_devices:
            return
        x, y = (a, b) if worse_is_larger else ([-v for v in a], [-v for v in b])
        _, p = mann_whitney_greater(x, y)
        bad = effect is not None and effect > limit and p < gate.alpha
        checks.append({"metric": name, "effect": effect, "limit": limit, "p": p, "failed": bad})
        if bad:
            failures.append(f"{describe}, n={len(a)} vs {len(b)}, {_p_text(p, gate.alpha)}")

    cp95, kp95 = canary.p95_ms, control.p95_ms
    ratio = (statistics.median(cp95) / statistics.median(kp95)
             if cp95 and kp95 and statistics.median(kp95) > 0 else None)
    per_device("latency_p95_ratio", gate.max_latency_ratio, cp95, kp95, ratio,
               f"canary p95 latency {ratio or 0:.1f}x control", True)
    dd = (statistics.median(canary.drift) - statistics.median(control.drift)
          if canary.drift and control.drift else None)
    per_device("drift_delta", gate.max_drift_delta, canary.drift, control.drift, dd,
               f"canary drift score {dd or 0:+.3f} above control", True)
    cd = (statistics.median(control.confidence) - statistics.median(canary.confidence)
          if canary.confidence and control.confidence else None)
    per_device("confidence_drop", gate.max_confidence_drop, canary.confidence,
               control.confidence, cd, f"canary confidence {cd or 0:.3f} below control", False)

    if gate.max_error_rate_delta is not None and canary.inferences and control.inferences:
        r1 = canary.errors / canary.inferences
        r2 = control.errors / control.inferences
        _, p = two_proportion_greater(canary.errors, canary.inferences, control.errors,
                                      control.inferences)
        bad = r1 - r2 > gate.max_error_rate_delta and p < gate.alpha
        checks.append({"metric": "error_rate_delta", "effect": r1 - r2,
                       "limit": gate.max_error_rate_delta, "p": p, "failed": bad})
        if bad:
            failures.append(f"canary error rate {r1:.1%} vs control {r2:.1%}, {n_text}, "
                            f"{_p_text(p, gate.alpha)}")
    if gate.max_accuracy_drop is not None and canary.labelled and control.labelled:
        a1 = canary.correct / canary.labelled
        a2 = control.correct / control.labelled
        # one-sided: the canary's *error* share is larger than the control's
        _, p = two_proportion_greater(canary.labelled - canary.correct, canary.labelled,
                                      control.labelled - control.correct, control.labelled)
        bad = a2 - a1 > gate.max_accuracy_drop and p < gate.alpha
        checks.append({"metric": "accuracy_drop", "effect": a2 - a1,
                       "limit": gate.max_accuracy_drop, "p": p, "failed": bad})
        if bad:
            failures.append(f"canary field accuracy {a1:.1%} vs control {a2:.1%}, "
                            f"labelled {canary.labelled} vs {control.labelled}, "
                            f"{_p_text(p, gate.alpha)}")
    if failures:
        return GateResult("fail", f"{where}: " + "; ".join(failures), tuple(checks))
    return GateResult("pass", f"{where}: field gate passed ({n_text})", tuple(checks))
