"""Trial quality (issue 10 item 7): the model on trial against the previous model's baseline.

The inference app's health reports (``edge-updater report-health``: ``latency_p95_ms``,
``inferences``, ``errors``, ``metric``) are folded, per model version, into a small rolling
**baseline** in the state dir (:class:`BaselineStore`) while that version serves. During a trial
the candidate's reports are compared with the previous version's baseline on the same device,
with the signed policy's ``[trial]`` rule (:class:`edgepkg.policy.TrialRule`):

* ``max_latency_ratio``: median reported p95 latency, trial / baseline;
* ``max_error_rate``: errors / inferences over the trial (an absolute ceiling; the baseline's
  rate is quoted in the reason);
* ``max_metric_drop``: mean reported metric, baseline minus trial;
* ``min_reports``: reports needed on each side before a comparison counts; a trial does not
  commit before it has them (and rolls back at the trial deadline if it never gets them).

:func:`judge_quality` and :func:`apply_quality` are pure; the store is the only I/O here.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from device_updater._fsutil import atomic_write_json, file_lock, read_limited
from device_updater.errors import HealthLogError
from device_updater.trial import HealthReport, TrialDecision
from edgepkg.policy import TrialRule

MAX_ROWS = 100  # per version: a rolling window of the latest reports
MAX_VERSIONS = 4  # per model: the running, the previous and a couple more


@dataclass(frozen=True)
class QualitySummary:
    """What the app reported about one model version, summarised."""

    reports: int = 0
    p95_ms: float | None = None  # median of the reported p95 latencies
    p95_reports: int = 0
    inferences: int = 0
    errors: int = 0
    metric: float | None = None  # mean of the reported metric values
    metric_reports: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.inferences if self.inferences else None


def summarize(rows: Sequence[HealthReport]) -> QualitySummary:
    p95 = [r.latency_p95_ms for r in rows if r.latency_p95_ms is not None]
    metric = [r.metric for r in rows if r.metric is not None]
    return QualitySummary(
        reports=len(rows), p95_ms=statistics.median(p95) if p95 else None,
        p95_reports=len(p95), inferences=sum(r.inferences for r in rows),
        errors=sum(r.errors for r in rows),
        metric=statistics.fmean(metric) if metric else None, metric_reports=len(metric))


Verdict = Literal["ok", "rollback", "wait"]


def judge_quality(rule: TrialRule, baseline: QualitySummary | None,
                  trial: QualitySummary) -> tuple[Verdict, str]:
    """Compare the trial with the previous model's baseline (pure); (verdict, reason)."""
    need = rule.min_reports
    if trial.reports < need:
        return "wait", f"trial quality: {trial.reports} of {need} reports so far"
    base = baseline or QualitySummary()
    notes: list[str] = []
    rate = trial.error_rate
    if rule.max_error_rate is not None and rate is not None:
        before = (f"; previous model {base.error_rate:.1%}" if base.error_rate is not None
                  else "")
        if rate > rule.max_error_rate:
            return "rollback", (f"trial: error rate {rate:.1%} ({trial.errors} of "
                                f"{trial.inferences} inferences) exceeds the policy's "
                                f"{rule.max_error_rate:.1%}{before}")
        notes.append(f"error rate {rate:.1%}")
    if rule.max_latency_ratio is not None:
        if (base.p95_ms and trial.p95_ms is not None and base.p95_reports >= need
                and trial.p95_reports >= need):
            ratio = trial.p95_ms / base.p95_ms
            if ratio > rule.max_latency_ratio:
                return "rollback", (f"trial: p95 latency {trial.p95_ms:.1f} ms is {ratio:.1f}x "
                                    f"the previous model's {base.p95_ms:.1f} ms (policy "
                                    f"{rule.max_latency_ratio:g}x)")
            notes.append(f"p95 latency {ratio:.2f}x the previous model's")
        else:
            notes.append("latency not compared (too few reports with latency_p95_ms)")
    if rule.max_metric_drop is not None:
        if (base.metric is not None and trial.metric is not None
                and base.metric_reports >= need and trial.metric_reports >= need):
            drop = base.metric - trial.metric
            if drop > rule.max_metric_drop:
                return "rollback", (f"trial: reported metric {trial.metric:.4f} is {drop:.4f} "
                                    f"below the previous model's {base.metric:.4f} (policy "
                                    f"allows a drop of {rule.max_metric_drop:g})")
            notes.append(f"metric {trial.metric:.4f} vs {base.metric:.4f}")
        else:
            notes.append("metric not compared (too few reports with a metric)")
    return "ok", "trial quality: " + ("; ".join(notes) or "no quality rule set")


def apply_quality(decision: TrialDecision, rule: TrialRule | None,
                  baseline: QualitySummary | None, trial: QualitySummary, *,
                  past_deadline: bool) -> TrialDecision:
    """The trial decision once quality is taken into account (pure): a quality regression
    rolls back; a commit waits for ``min_reports``, up to the trial deadline."""
    if rule is None or decision.action == "rollback":
        return decision
    verdict, reason = judge_quality(rule, baseline, trial)
    if verdict == "rollback":
        return replace(decision, action="rollback", reason=reason)
    if verdict == "wait":
        if past_deadline:
            return replace(decision, action="rollback",
                           reason=f"never confirmed by the trial deadline: {reason}")
        if decision.action == "commit":
            return replace(decision, action="wait", reason=reason)
        return decision
    if decision.action == "commit":
        return replace(decision, reason=f"{decision.reason}; {reason}")
    return decision


class BaselineStore:
    """Per-model rolling baselines (``{version: {"last": time, "rows": [...]}}``), one JSON
    file rewritten atomically; at most ``MAX_ROWS`` reports per version, ``MAX_VERSIONS``
    versions (least recently reported dropped)."""

    MAX_BYTES = 1 << 20

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(read_limited(self.path, self.MAX_BYTES))
        except (OSError, ValueError):
            return {}  # a damaged baseline only skips comparisons; it never blocks an update
        return data if isinstance(data, dict) else {}

    def record(self, model: str, version: str, reports: Sequence[HealthReport]) -> None:
        """Fold in the reports for ``model`` ``version`` made since the last ones folded."""
        mine = [r for r in reports if r.version == version and r.model in (None, model)]
        if not mine:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            data = self._load()
            entry = data.get(version) if isinstance(data.get(version), dict) else None
            last = entry.get("last") if entry else None
            rows = list(entry.get("rows", [])) if entry else []
            new = [r for r in mine if not isinstance(last, int | float) or r.time > last]
            if not new:
                return
            rows += [r.to_dict() for r in new]
            data[version] = {"last": max(r.time for r in new), "rows": rows[-MAX_ROWS:]}
            keep = sorted(data, key=lambda v: float(data[v].get("last", 0.0)))[-MAX_VERSIONS:]
            atomic_write_json(self.path, {v: data[v] for v in keep}, 0o600)

    def summary(self, version: str) -> QualitySummary | None:
        entry = self._load().get(version)
        if not isinstance(entry, dict):
            return None
        rows = []
        for item in entry.get("rows", []):
            try:
                rows.append(HealthReport.from_dict(item))
            except HealthLogError:
                continue
        return summarize(rows) if rows else None
