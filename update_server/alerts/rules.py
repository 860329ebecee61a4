"""Fleet alerts, decided from plain values plus ``now`` (no database, no Flask).

Four kinds, each with a stable ``key`` so the dashboard and the API can de-duplicate them:

* ``device_silent`` — an enabled device has not checked in for more than ``silent_intervals``
  poll intervals (it is offline, or its updater is stuck).
* ``latency_regression`` — a device's inference p95 latency is more than ``latency_ratio``
  times its baseline. The baseline is a slow moving average of the device's own p95 that only
  learns from normal samples (:func:`update_baseline`), so a regression does not become the
  new normal.
* ``validation_below_policy`` — the latest ``validation_result`` event of a device for a model
  says the candidate failed its policy (metric below ``min``, or ``passed: false``).
* ``rollout_paused`` — a rollout is paused (automatically, with the reason, or by an operator).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WARNING = "warning"
CRITICAL = "critical"

BASELINE_ALPHA = 0.1
"""Weight of a new sample in the latency baseline (exponential moving average)."""
BASELINE_MIN_SAMPLES = 3
"""Samples needed before a baseline is trusted enough to alert on."""


@dataclass(frozen=True)
class Alert:
    kind: str
    severity: str
    subject: str  # device id or rollout id
    message: str
    since: dt.datetime | None = None
    details: Mapping[str, Any] | None = None

    @property
    def key(self) -> str:
        model = (self.details or {}).get("model")
        return f"{self.kind}:{self.subject}" + (f":{model}" if model else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "severity": self.severity,
            "subject": self.subject,
            "message": self.message,
            "since": self.since.isoformat() if self.since else None,
            "details": dict(self.details or {}),
        }


@dataclass(frozen=True)
class DeviceHealth:
    device_id: str
    last_seen: dt.datetime | None
    enrolled_at: dt.datetime
    enabled: bool = True
    p95_ms: float | None = None
    baseline_p95_ms: float | None = None
    baseline_samples: int = 0


@dataclass(frozen=True)
class Baseline:
    p95_ms: float
    samples: int


def _finite_positive(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    v = float(x)
    return v if math.isfinite(v) and v > 0 else None


def update_baseline(
    baseline: Baseline | None, p95_ms: Any, *, ratio: float = 2.0
) -> Baseline | None:
    """Fold one reported p95 into the baseline; samples that would alert are not learned."""
    v = _finite_positive(p95_ms)
    if v is None:
        return baseline
    if baseline is None:
        return Baseline(v, 1)
    if baseline.samples >= BASELINE_MIN_SAMPLES and v > ratio * baseline.p95_ms:
        return baseline
    return Baseline(
        (1 - BASELINE_ALPHA) * baseline.p95_ms + BASELINE_ALPHA * v, baseline.samples + 1
    )


def silent_devices(
    devices: Iterable[DeviceHealth], poll_interval_s: int, now: dt.datetime, *, intervals: int = 3
) -> list[Alert]:
    limit = dt.timedelta(seconds=poll_interval_s * intervals)
    out = []
    for d in devices:
        if not d.enabled:
            continue
        seen = d.last_seen or d.enrolled_at
        if now - seen > limit:
            minutes = int((now - seen).total_seconds() // 60)
            never = " (never checked in)" if d.last_seen is None else ""
            out.append(
                Alert(
                    "device_silent",
                    WARNING,
                    d.device_id,
                    f"silent for {minutes} min, more than {intervals} poll intervals{never}",
                    seen,
                )
            )
    return out


def latency_regressions(devices: Iterable[DeviceHealth], *, ratio: float = 2.0) -> list[Alert]:
    out = []
    for d in devices:
        if not d.enabled or d.baseline_samples < BASELINE_MIN_SAMPLES:
            continue
        p95 = _finite_positive(d.p95_ms)
        base = _finite_positive(d.baseline_p95_ms)
        if p95 is None or base is None:
            continue
        if p95 > ratio * base:
            out.append(
                Alert(
                    "latency_regression",
                    WARNING,
                    d.device_id,
                    f"p95 latency {p95:.1f} ms is {p95 / base:.1f}x its baseline {base:.1f} ms",
                    None,
                    {"p95_ms": p95, "baseline_p95_ms": base},
                )
            )
    return out


def validation_failed(details: Mapping[str, Any]) -> bool | None:
    """Whether a ``validation_result`` event's details say the policy failed (None: unknown)."""
    passed = details.get("passed")
    if isinstance(passed, bool) and not passed:
        return True
    value = details.get("value")
    minimum = details.get("min")
    if (
        isinstance(value, int | float)
        and isinstance(minimum, int | float)
        and not isinstance(value, bool)
        and not isinstance(minimum, bool)
    ):
        return not value >= minimum
    if isinstance(passed, bool):
        return not passed
    return None


@dataclass(frozen=True)
class ValidationResult:
    device_id: str
    model: str | None
    version: str | None
    time: dt.datetime
    details: Mapping[str, Any]


def validation_alerts(latest: Iterable[ValidationResult]) -> list[Alert]:
    """Alerts for the latest validation result of each (device, model) that failed."""
    newest: dict[tuple[str, str | None], ValidationResult] = {}
    for v in latest:
        k = (v.device_id, v.model)
        if k not in newest or v.time > newest[k].time:
            newest[k] = v
    out = []
    for v in newest.values():
        if validation_failed(v.details) is not True:
            continue
        metric = str(v.details.get("metric", "metric"))[:64]
        value, minimum = v.details.get("value"), v.details.get("min")
        what = (
            f"{metric} {value} below policy minimum {minimum}"
            if minimum is not None
            else (f"{metric} failed its policy")
        )
        out.append(
            Alert(
                "validation_below_policy",
                CRITICAL,
                v.device_id,
                f"{v.model or 'model'} {v.version or ''}: {what}".replace("  ", " "),
                v.time,
                {
                    "model": v.model,
                    "version": v.version,
                    "metric": metric,
                    "value": value,
                    "min": minimum,
                },
            )
        )
    return out


@dataclass(frozen=True)
class RolloutView:
    rollout_id: str
    model: str
    version: str
    status: str
    reason: str | None
    updated_at: dt.datetime | None = None


def rollout_alerts(rollouts: Iterable[RolloutView]) -> list[Alert]:
    return [
        Alert(
            "rollout_paused",
            CRITICAL,
            r.rollout_id,
            f"rollout of {r.model} {r.version} is paused: {r.reason or 'no reason given'}",
            r.updated_at,
            {"model": r.model, "version": r.version, "reason": r.reason},
        )
        for r in rollouts
        if r.status == "paused"
    ]


_ORDER = {CRITICAL: 0, WARNING: 1}


def sort_alerts(alerts: Iterable[Alert]) -> list[Alert]:
    return sorted(alerts, key=lambda a: (_ORDER.get(a.severity, 9), a.kind, a.subject))
