"""Telemetry alert rules, decided from plain values plus ``now`` (no database, no Flask).

Every rule turns one interval (or one cohort hour) into a :class:`Check`: is the subject bad
right now, and why. :func:`step` folds checks into a persisted :class:`AlertState` with
hysteresis: an alert opens after ``open_after`` consecutive bad checks and resolves after
``resolve_after`` consecutive good ones, so one noisy interval neither opens nor closes it.

Kinds (subject is a device id unless said otherwise):

* ``drift`` — the device's drift score against its reference profile (PSI, or Jensen-Shannon
  when no PSI is sent) is above the threshold; ``cohort_drift`` — the same, averaged over the
  devices of a cohort (subject ``model@version#tag``) in one rollup hour;
* ``field_accuracy`` — feedback accuracy below the policy floor, over enough labels;
* ``field_latency`` — p95 latency above ``latency_ratio`` times the device's own baseline
  (learned with :func:`update_server.alerts.rules.update_baseline`, which ignores regressions);
* ``error_rate`` — inference errors / inferences above the limit, over enough inferences;
* ``hardware_temperature``, ``disk_nearly_full``, ``memory_high`` — from the daemon's numbers;
* ``device_dark`` — a device that sent telemetry stopped doing so for ``dark_after_s``. It is
  time-based, so it opens at once when seen dark and resolves on the device's next report.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edgepkg.protocol import HardwareHealth, ModelTelemetry
from update_server.alerts.rules import BASELINE_MIN_SAMPLES, CRITICAL, WARNING, Alert, Baseline

Transition = Literal["opened", "resolved"] | None


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.25
    js: float = 0.1
    accuracy_floor: float = 0.8
    min_labels: int = 20
    latency_ratio: float = 2.0
    error_rate: float = 0.05
    min_inferences: int = 20
    temp_c: float = 85.0
    disk_free_fraction: float = 0.05
    mem_used_fraction: float = 0.95
    cohort_min_devices: int = 3
    open_after: int = 3
    resolve_after: int = 3


DEFAULT = Thresholds()


@dataclass(frozen=True)
class Check:
    kind: str
    severity: str
    subject: str
    bad: bool
    message: str
    model: str | None = None
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.subject}" + (f":{self.model}" if self.model else "")


@dataclass(frozen=True)
class AlertState:
    is_open: bool = False
    bad_streak: int = 0
    good_streak: int = 0
    opened_at: dt.datetime | None = None
    message: str = ""


def step(
    state: AlertState | None, check: Check, now: dt.datetime, th: Thresholds = DEFAULT,
    *, open_after: int | None = None,
) -> tuple[AlertState, Transition]:
    """Fold one check into the alert's state; say whether it opened or resolved now."""
    s = state or AlertState()
    need_open = th.open_after if open_after is None else open_after
    if check.bad:
        bad, good = s.bad_streak + 1, 0
        if not s.is_open and bad >= need_open:
            return AlertState(True, bad, good, now, check.message), "opened"
        # an open alert keeps its first message's time but shows the newest reason
        message = check.message if s.is_open else s.message
        return AlertState(s.is_open, bad, good, s.opened_at, message), None
    bad, good = 0, s.good_streak + 1
    if s.is_open and good >= th.resolve_after:
        return AlertState(False, bad, good, None, s.message), "resolved"
    return AlertState(s.is_open, bad, good, s.opened_at, s.message), None


def drift_score(m: ModelTelemetry) -> tuple[str, float] | None:
    """The drift statistic the device sent (PSI preferred, then JS)."""
    for key in ("psi", "js"):
        if key in m.drift:
            return key, m.drift[key]
    return None


def model_checks(
    device_id: str, name: str, m: ModelTelemetry, baseline: Baseline | None,
    th: Thresholds = DEFAULT,
) -> list[Check]:
    """The per-model checks of one interval. A metric with no data this interval gives no
    check (the streak neither grows nor resets)."""
    out: list[Check] = []
    where = f"{name} {m.version}"
    score = drift_score(m)
    if score is not None:
        key, value = score
        limit = th.psi if key == "psi" else th.js
        out.append(Check("drift", WARNING, device_id, value > limit,
                         f"{where}: input drift {key.upper()} {value:.3f} above {limit:g}",
                         name, {"stat": key, "value": value, "limit": limit}))
    if m.feedback_labelled >= th.min_labels:
        acc = m.feedback_correct / m.feedback_labelled
        out.append(Check("field_accuracy", CRITICAL, device_id, acc < th.accuracy_floor,
                         f"{where}: field accuracy {acc:.1%} below policy "
                         f"{th.accuracy_floor:.0%} ({m.feedback_labelled} labels)",
                         name, {"accuracy": acc, "floor": th.accuracy_floor}))
    if (m.latency_p95_ms is not None and baseline is not None
            and baseline.samples >= BASELINE_MIN_SAMPLES and baseline.p95_ms > 0):
        ratio = m.latency_p95_ms / baseline.p95_ms
        out.append(Check("field_latency", WARNING, device_id, ratio > th.latency_ratio,
                         f"{where}: p95 latency {m.latency_p95_ms:.1f} ms is {ratio:.1f}x its "
                         f"baseline {baseline.p95_ms:.1f} ms",
                         name, {"p95_ms": m.latency_p95_ms, "baseline_p95_ms": baseline.p95_ms}))
    if m.inferences >= th.min_inferences:
        rate = m.errors / m.inferences
        out.append(Check("error_rate", WARNING, device_id, rate > th.error_rate,
                         f"{where}: {rate:.1%} of {m.inferences} inferences failed "
                         f"(limit {th.error_rate:.0%})", name, {"error_rate": rate}))
    return out


def hardware_checks(
    device_id: str, hw: HardwareHealth, th: Thresholds = DEFAULT
) -> list[Check]:
    out: list[Check] = []
    temps = [t for t in (hw.cpu_temp_c, hw.gpu_temp_c) if t is not None]
    if temps:
        hot = max(temps)
        out.append(Check("hardware_temperature", CRITICAL, device_id, hot >= th.temp_c,
                         f"temperature {hot:.0f} °C at or above {th.temp_c:.0f} °C",
                         None, {"temp_c": hot}))
    if hw.disk_free_bytes is not None and hw.disk_total_bytes:
        free = hw.disk_free_bytes / hw.disk_total_bytes
        out.append(Check("disk_nearly_full", WARNING, device_id, free < th.disk_free_fraction,
                         f"disk {free:.1%} free (below {th.disk_free_fraction:.0%}): updates "
                         "need room for a second slot", None, {"free_fraction": free}))
    if hw.mem_used_bytes is not None and hw.mem_total_bytes:
        used = hw.mem_used_bytes / hw.mem_total_bytes
        out.append(Check("memory_high", WARNING, device_id, used > th.mem_used_fraction,
                         f"memory {used:.0%} used (above {th.mem_used_fraction:.0%})",
                         None, {"used_fraction": used}))
    return out


def cohort_drift_check(
    model: str, version: str, tag: str, scores: Sequence[float], th: Thresholds = DEFAULT,
) -> Check | None:
    """Mean drift of a cohort in one hour (None below ``cohort_min_devices`` devices)."""
    if len(scores) < th.cohort_min_devices:
        return None
    mean = statistics.fmean(scores)
    subject = f"{model}@{version}#{tag}"
    return Check("cohort_drift", WARNING, subject, mean > th.psi,
                 f"cohort {subject}: mean drift {mean:.3f} over {len(scores)} devices above "
                 f"{th.psi:g}", model, {"mean": mean, "devices": len(scores), "tag": tag})


def dark_check(
    device_id: str, last_end: dt.datetime, now: dt.datetime, dark_after_s: int
) -> Check:
    silent = (now - last_end).total_seconds()
    return Check("device_dark", WARNING, device_id, silent > dark_after_s,
                 f"no telemetry for {int(silent // 60)} min (expected every "
                 f"{dark_after_s // 60} min or less)", None,
                 {"last_interval_end": last_end.isoformat()})


def as_alert(key_kind: str, severity: str, subject: str, model: str | None, message: str,
             opened_at: dt.datetime | None, details: Mapping[str, Any]) -> Alert:
    """An open telemetry alert in the fleet alert list's shape."""
    return Alert(key_kind, severity, subject, message, opened_at,
                 {**details, "model": model} if model else dict(details))
