"""The judgement: apply a parsed policy to measured evidence (pure: plain numbers in).

Every rule the policy sets becomes one :class:`Check` in the verdict, passed or not, with the
candidate's value, the running model's value, the candidate's 95% confidence interval and the
limit, so a person can see which rule decided and how sure the measurement is. A rule that
cannot be checked (no running model, an external runner that reports no memory) is listed as
``skipped`` with the reason instead of passing silently.

Statistics: in ``threshold`` mode a regression rule fails when the measured drop exceeds the
limit. In ``significant`` mode it fails only when the drop exceeds the limit *and* the paired
bootstrap says a drop within the limit is unlikely (p < alpha), so a noisy holdout does not
reject a model that is as good within measurement error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edgepkg.policy import Policy

#: Below this many milliseconds of difference per invoke, a latency ratio is noise (sub-100 µs
#: models: timer resolution, cache and scheduler effects dominate).
NOISE_FLOOR_MS = 0.05
#: Peak-memory increments below this are allocator/page granularity, not the model.
MEMORY_FLOOR_BYTES = 8 << 20


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    n: int

    def as_list(self) -> list[float]:
        return [self.lo, self.hi]


@dataclass(frozen=True)
class Measured:
    """One metric on the candidate and the running model, on the same samples.

    ``p_within``: paired-bootstrap share of resamples in which the worsening is within the
    policy's limit (the p-value of "it regressed beyond the limit"); None when not computed.
    """

    name: str
    candidate: Estimate
    running: Estimate | None = None
    p_within: float | None = None


@dataclass(frozen=True)
class ClassStats:
    label: int
    support: int
    recall: Measured
    precision: Estimate


@dataclass(frozen=True)
class Latency:
    ratio: float
    ratio_lo: float
    ratio_hi: float
    pairs: int
    candidate_median_ms: float
    running_median_ms: float
    stop: str = ""


@dataclass(frozen=True)
class Evidence:
    metric: Measured
    candidate_p95_ms: float
    slices: dict[str, Measured] = field(default_factory=dict)
    classes: list[ClassStats] = field(default_factory=list)
    io_problems: list[str] | None = None  # None: not compared (no running model/signature)
    latency: Latency | None = None
    candidate_peak_bytes: int | None = None
    running_peak_bytes: int | None = None
    candidate_model_bytes: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Check:
    rule: str
    subject: str
    status: str  # "pass" | "fail" | "skipped"
    message: str
    value: float | None = None
    running: float | None = None
    ci: list[float] | None = None
    limit: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    checks: list[Check]
    notes: list[str] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """Failed checks first (the ones that decided), then the rest, then notes."""
        order = {"fail": 0, "pass": 1, "skipped": 2}
        ranked = sorted(self.checks, key=lambda c: order[c.status])
        return [f"{c.status.upper()} {c.rule}: {c.message}" for c in ranked] + self.notes

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "checks": [c.to_dict() for c in self.checks],
                "reasons": self.reasons}


def _f(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


class _Judge:
    def __init__(self, policy: Policy) -> None:
        self.p = policy
        self.checks: list[Check] = []

    def add(self, rule: str, subject: str, ok: bool | None, message: str, **kw: Any) -> None:
        status = "skipped" if ok is None else ("pass" if ok else "fail")
        self.checks.append(Check(rule, subject, status, message, **kw))

    def floor(self, rule: str, m: Measured, limit: float, lower_better: bool) -> None:
        v = m.candidate.value
        bad = math.isnan(v) or (v > limit if lower_better else v < limit)
        word = "ceiling" if lower_better else "minimum"
        self.add(rule, m.name, not bad,
                 f"{m.name} {_f(v)} (95% CI {_f(m.candidate.lo)}..{_f(m.candidate.hi)}, "
                 f"n={m.candidate.n}) {'breaks' if bad else 'meets'} the {word} {limit:.4f}",
                 value=v, running=m.running.value if m.running else None,
                 ci=m.candidate.as_list(), limit=limit)

    def regression(self, rule: str, m: Measured, limit: float, lower_better: bool) -> None:
        if m.running is None:
            self.add(rule, m.name, None, f"{m.name}: no running model result, regression not "
                     "checked", value=m.candidate.value, limit=limit)
            return
        c, r = m.candidate.value, m.running.value
        drop = (c - r) if lower_better else (r - c)
        over = math.isnan(drop) or drop > limit + 1e-12
        sig = ""
        if over and self.p.statistics.mode == "significant" and m.p_within is not None:
            if m.p_within >= self.p.statistics.alpha:
                over = False
                sig = (f"; not significant (p={m.p_within:.3f} >= alpha "
                       f"{self.p.statistics.alpha})")
            else:
                sig = f"; significant (p={m.p_within:.3f})"
        verb = "worsened" if drop > 0 else "improved"
        self.add(rule, m.name, not over,
                 f"{m.name} {verb} by {abs(drop):.4f} ({_f(r)} -> {_f(c)}, candidate 95% CI "
                 f"{_f(m.candidate.lo)}..{_f(m.candidate.hi)}), allowed {limit:.4f}{sig}",
                 value=c, running=r, ci=m.candidate.as_list(), limit=limit)


def judge(policy: Policy, ev: Evidence) -> Verdict:
    """Accept or reject with every rule's outcome (pure; see the module doc)."""
    j = _Judge(policy)
    p = policy
    lower = p.lower_is_better
    if ev.io_problems is None:
        j.add("io.must_match_running", "I/O contract", None,
              "not compared (no running model or its runner reports no signature)")
    elif p.io.must_match_running:
        j.add("io.must_match_running", "I/O contract", not ev.io_problems,
              "; ".join(ev.io_problems) if ev.io_problems else
              "inputs and outputs match the running model (names, dtypes, shapes, classes)")
    if p.min is not None:
        j.floor("min", ev.metric, p.min, lower)
    if p.max_regression is not None:
        j.regression("max_regression", ev.metric, p.max_regression, lower)
    if p.per_class is not None:
        pc = p.per_class
        for cs in ev.classes:
            if cs.support < pc.min_support:
                continue
            name = cs.recall.name
            if pc.min_recall is not None:
                j.floor("per_class.min_recall", cs.recall, pc.min_recall, False)
            if pc.max_recall_drop is not None:
                j.regression("per_class.max_recall_drop", cs.recall, pc.max_recall_drop, False)
            if pc.min_precision is not None:
                j.floor("per_class.min_precision",
                        Measured(name.replace("recall", "precision"), cs.precision),
                        pc.min_precision, False)
        if not ev.classes:
            j.add("per_class", "per-class metrics", None,
                  "not computed (the metric is not a classification metric)")
    for rule in p.slices:
        m = ev.slices.get(rule.tag)
        if m is None:
            j.add("slices", f"slice {rule.tag}", False,
                  f"the policy has rules for slice {rule.tag!r} but the holdout has no such "
                  "mask in slices.npz")
            continue
        if rule.min is not None:
            j.floor(f"slices[{rule.tag}].min", m, rule.min, lower)
        if rule.max_regression is not None:
            j.regression(f"slices[{rule.tag}].max_regression", m, rule.max_regression, lower)
    _latency(j, p, ev)
    _resources(j, p, ev)
    if not j.checks:
        j.add("policy", "policy", True, "no validation rules in the manifest: accepted")
    accepted = all(c.status != "fail" for c in j.checks)
    return Verdict(accepted, j.checks, list(ev.notes))


def _latency(j: _Judge, p: Policy, ev: Evidence) -> None:
    if p.max_latency_ms is not None:
        v = ev.candidate_p95_ms
        j.add("max_latency_ms", "p95 invoke latency", v <= p.max_latency_ms,
              f"p95 of invoke {v:.3f} ms vs the budget {p.max_latency_ms:.3f} ms",
              value=v, limit=p.max_latency_ms)
    if p.max_latency_ratio is None:
        return
    lat = ev.latency
    if lat is None:
        j.add("max_latency_ratio", "latency ratio", None,
              "no running model measured in the same process: ratio not checked")
        return
    limit = p.max_latency_ratio
    est = lat.ratio_lo if p.statistics.mode == "significant" else lat.ratio
    diff = lat.candidate_median_ms - lat.running_median_ms
    over = est > limit and diff > NOISE_FLOOR_MS
    floor = ""
    if est > limit and not over:
        floor = (f"; the difference {diff * 1000:.1f} µs per invoke is under the "
                 f"{NOISE_FLOOR_MS * 1000:.0f} µs noise floor")
    j.add("max_latency_ratio", "latency ratio", not over,
          f"invoke time {lat.ratio:.3f}x the running model (95% CI {lat.ratio_lo:.3f}.."
          f"{lat.ratio_hi:.3f}, {lat.pairs} interleaved pairs, medians "
          f"{lat.candidate_median_ms:.4f} vs {lat.running_median_ms:.4f} ms), allowed "
          f"{limit:.2f}x{floor}",
          value=lat.ratio, running=1.0, ci=[lat.ratio_lo, lat.ratio_hi], limit=limit)


def _resources(j: _Judge, p: Policy, ev: Evidence) -> None:
    if p.max_model_bytes is not None and ev.candidate_model_bytes is not None:
        size = ev.candidate_model_bytes
        j.add("max_model_bytes", "model size", size <= p.max_model_bytes,
              f"model file {size} bytes vs the budget {p.max_model_bytes}",
              value=float(size), limit=float(p.max_model_bytes))
    cand = ev.candidate_peak_bytes
    if p.max_memory_bytes is not None:
        if cand is None:
            j.add("max_memory_bytes", "peak memory", None, "runner reports no memory use")
        else:
            j.add("max_memory_bytes", "peak memory", cand <= p.max_memory_bytes,
                  f"runner peak memory over its baseline {cand} bytes vs the budget "
                  f"{p.max_memory_bytes}", value=float(cand), limit=float(p.max_memory_bytes))
    if p.max_memory_ratio is not None:
        run = ev.running_peak_bytes
        if cand is None or run is None:
            j.add("max_memory_ratio", "peak memory ratio", None,
                  "no running model memory measured the same way: ratio not checked")
        else:
            ratio = max(cand, MEMORY_FLOOR_BYTES) / max(run, MEMORY_FLOOR_BYTES)
            j.add("max_memory_ratio", "peak memory ratio", ratio <= p.max_memory_ratio,
                  f"runner peak memory {cand} vs {run} bytes for the running model = "
                  f"{ratio:.2f}x (increments under {MEMORY_FLOOR_BYTES >> 20} MiB count as "
                  f"{MEMORY_FLOOR_BYTES >> 20} MiB), allowed {p.max_memory_ratio:.2f}x",
                  value=ratio, running=1.0, limit=p.max_memory_ratio)
