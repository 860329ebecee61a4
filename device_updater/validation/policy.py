"""The signed validation policy, applied to measured results (pure).

Policy (from the signed manifest, all keys optional)::

    {"metric": "top1_accuracy", "min": 0.9, "max_regression": 0.02, "max_latency_ratio": 1.5}

* ``min``: the candidate's metric must be >= ``min``;
* ``max_regression``: the metric may drop by at most this much (absolute, in metric units:
  0.02 = two accuracy points) below the current model's value on the same holdout;
* ``max_latency_ratio``: the candidate's p95 latency must be <= ratio x the current model's.

This is the old, single-result judgement (kept for the daemon's current call); the full gate
with per-class, slice, I/O, memory and interleaved latency rules is
:func:`device_updater.validation.gate.run_gate`, judged by :mod:`.judge`.

Without a current model (first install, or the current model could not be measured) only the
absolute checks apply, and ``reasons`` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from device_updater.errors import PolicyError
from device_updater.validation.result import ValidationResult
from edgepkg.policy import POLICY_KEYS, Policy as _SchemaPolicy, PolicySchemaError, parse_policy

__all__ = ["POLICY_KEYS", "Policy", "PolicyDecision", "evaluate_policy", "parse_device_policy"]


def parse_device_policy(data: Mapping[str, Any] | None) -> _SchemaPolicy:
    """The signed policy (hostile input) parsed with the shared schema; raise PolicyError."""
    try:
        return parse_policy(data)
    except PolicySchemaError as exc:
        raise PolicyError(str(exc)) from None


class Policy(_SchemaPolicy):
    """The shared :class:`edgepkg.policy.Policy`; ``from_mapping`` raises the device's
    :class:`PolicyError` (a ValidationError) so the daemon rejects the candidate with it."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> _SchemaPolicy:
        return parse_device_policy(data)


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
    p = policy if isinstance(policy, _SchemaPolicy) else parse_device_policy(policy)
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
    gate_only = [k for k in p.to_dict() if k not in ("metric", "min", "max_regression",
                                                     "max_latency_ratio")]
    if gate_only:
        reasons.append(f"rules {gate_only} are checked only by the full gate "
                       "(device_updater.validation.gate.run_gate), not by evaluate_policy")
    if p.min is None and p.max_regression is None and p.max_latency_ratio is None:
        reasons.append("no validation policy in the manifest: accepted")
    return PolicyDecision(ok, reasons, values)
