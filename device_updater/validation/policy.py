"""The signed validation policy, applied to measured results (pure).

Policy (from the signed manifest, all keys optional)::

    {"metric": "top1_accuracy", "min": 0.9, "max_regression": 0.02, "max_latency_ratio": 1.5}

* ``min``: the candidate's metric must be >= ``min``;
* ``max_regression``: the metric may drop by at most this much (absolute, in metric units:
  0.02 = two accuracy points) below the current model's value on the same holdout;
* ``max_latency_ratio``: the candidate's p95 latency must be <= ratio x the current model's.

Without a current model (first install, or the current model could not be measured) only the
absolute checks apply, and ``reasons`` says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from device_updater.errors import PolicyError
from device_updater.validation.result import METRICS, ValidationResult

POLICY_KEYS = ("metric", "min", "max_regression", "max_latency_ratio")


@dataclass(frozen=True)
class Policy:
    metric: str = "top1_accuracy"
    min: float | None = None
    max_regression: float | None = None
    max_latency_ratio: float | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Policy:
        """Parse a manifest policy (hostile input); raise :class:`PolicyError`."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PolicyError("validation policy must be an object")
        unknown = set(data) - set(POLICY_KEYS)
        if unknown:
            raise PolicyError(f"unknown validation policy keys {sorted(unknown)}")
        metric = data.get("metric") or "top1_accuracy"
        if metric not in METRICS:
            raise PolicyError(f"unknown validation metric {metric!r}; this device measures "
                              f"{sorted(METRICS)}")
        values: dict[str, float | None] = {}
        for key in ("min", "max_regression", "max_latency_ratio"):
            v = data.get(key)
            if v is None:
                values[key] = None
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or v < 0:
                raise PolicyError(f"validation policy {key} must be a non-negative number")
            values[key] = float(v)
        if values["max_latency_ratio"] == 0:
            raise PolicyError("validation policy max_latency_ratio must be > 0")
        return cls(metric=str(metric), **values)


@dataclass(frozen=True)
class PolicyDecision:
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


def evaluate_policy(candidate: ValidationResult, current: ValidationResult | None,
                    policy: Mapping[str, Any] | Policy | None) -> PolicyDecision:
    """Accept or reject the candidate with every reason spelled out (pure).

    Raises :class:`PolicyError` for a malformed policy (callers reject the candidate then).
    """
    p = policy if isinstance(policy, Policy) else Policy.from_mapping(policy)
    reasons: list[str] = []
    ok = True
    value = candidate.metrics.get(p.metric)
    values: dict[str, Any] = {
        "metric": p.metric, "candidate": value,
        "candidate_p95_ms": candidate.latency_p95_ms, "n": candidate.n,
    }
    if value is None:
        return PolicyDecision(False, [f"{p.metric} was not measured for the candidate"], values)
    cur_value = current.metrics.get(p.metric) if current is not None else None
    if current is not None:
        values.update(current=cur_value, current_p95_ms=current.latency_p95_ms,
                      current_version=current.version)
    if p.min is not None:
        if value < p.min:
            ok = False
            reasons.append(f"{p.metric} {value:.4f} is below the minimum {p.min:.4f}")
        else:
            reasons.append(f"{p.metric} {value:.4f} >= minimum {p.min:.4f}")
    if p.max_regression is not None:
        if cur_value is None:
            reasons.append("no current model result: regression not checked")
        else:
            drop = cur_value - value
            values["drop"] = drop
            if drop > p.max_regression + 1e-12:
                ok = False
                reasons.append(f"{p.metric} dropped by {drop:.4f} ({cur_value:.4f} -> "
                               f"{value:.4f}), more than the allowed {p.max_regression:.4f}")
            else:
                reasons.append(f"{p.metric} change {-drop:+.4f} within the allowed regression "
                               f"{p.max_regression:.4f}")
    if p.max_latency_ratio is not None:
        if current is None or current.latency_p95_ms <= 0:
            reasons.append("no current model latency: latency ratio not checked")
        else:
            ratio = candidate.latency_p95_ms / current.latency_p95_ms
            values["latency_ratio"] = ratio
            if ratio > p.max_latency_ratio:
                ok = False
                reasons.append(f"p95 latency {candidate.latency_p95_ms:.3f} ms is {ratio:.2f}x "
                               f"the current {current.latency_p95_ms:.3f} ms, over the allowed "
                               f"{p.max_latency_ratio:.2f}x")
            else:
                reasons.append(f"p95 latency ratio {ratio:.2f}x <= {p.max_latency_ratio:.2f}x")
    if p.min is None and p.max_regression is None and p.max_latency_ratio is None:
        reasons.append("no validation policy in the manifest: accepted")
    return PolicyDecision(ok, reasons, values)
