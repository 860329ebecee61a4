"""Shadow-run decisions (pure): per-batch agreement, budget breaches, and promote/reject/wait.

The daemon feeds live samples (the inference app's spool) to the candidate and the running
model; this module turns their outputs into counts and the counts into a decision with a
reason a person can act on. No files, no processes: the I/O is in :mod:`.run` and the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from device_updater.validation.judge import MEMORY_FLOOR_BYTES, NOISE_FLOOR_MS
from device_updater.validation.metrics import ScoringError, class_ids
from edgepkg.policy import Policy, ShadowRule

ShadowAction = Literal["promote", "reject", "wait"]


@dataclass(frozen=True)
class ShadowDecision:
    action: ShadowAction
    reason: str
    samples: int
    agreed: int

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.samples if self.samples else None

    def evidence(self, rule: ShadowRule) -> dict[str, object]:
        """What goes to the server in the ``validation_result`` event's details."""
        return {"decision": self.action, "samples": self.samples, "agreed": self.agreed,
                "agreement": None if self.agreement is None else round(self.agreement, 6),
                "min_agreement": rule.min_agreement, "min_samples": rule.min_samples,
                "reason": self.reason}


def agreeing(task: str, candidate: np.ndarray, running: np.ndarray, *,
             tolerance: float = 0.0) -> int:
    """How many samples of one batch the two models agree on.

    Classification: the same class id (argmax of scores, or the ids a final ArgMax emits).
    Regression and anomaly scores: every value within ``tolerance`` of the running model's.
    Raises :class:`ScoringError` when an output cannot be read that way (never reshaped).
    """
    n = int(running.shape[0]) if running.ndim else 0
    if candidate.shape[:1] != (n,):
        raise ScoringError(f"shadow: the candidate gave {candidate.shape[:1]} rows for {n} "
                           "samples")
    if task == "classification":
        a, _ = class_ids("candidate output", candidate, n)
        b, _ = class_ids("running output", running, n)
        return int(np.sum(a == b))
    if task in ("regression", "anomaly"):
        if candidate.shape != running.shape:
            raise ScoringError(f"shadow: candidate output shape {list(candidate.shape)} differs "
                               f"from the running model's {list(running.shape)}")
        if candidate.dtype.kind != "f" or running.dtype.kind != "f":
            raise ScoringError("shadow: regression agreement needs float outputs")
        diff = np.abs(candidate.astype(np.float64) - running.astype(np.float64))
        diff = diff.reshape(n, -1) if n else diff.reshape(0, 1)
        ok = np.all(np.isfinite(diff) & (diff <= tolerance), axis=1)
        return int(np.sum(ok))
    raise ScoringError(f"shadow runs do not support the {task!r} task")


def budget_breach(policy: Policy, *, cand_latencies_ms: list[float],
                  run_latencies_ms: list[float], cand_peak_bytes: int | None,
                  run_peak_bytes: int | None) -> str | None:
    """The first latency/memory budget of the policy that the candidate broke on live inputs.

    Latency compares medians (a shadow batch is small and not interleaved, so p95 ratios would
    be noise) with the gate's 50 µs noise floor; ``max_latency_ms`` applies to the p95.
    """
    if cand_latencies_ms and policy.max_latency_ms is not None:
        p95 = float(np.percentile(cand_latencies_ms, 95))
        if p95 > policy.max_latency_ms:
            return (f"p95 invoke latency {p95:.2f} ms on live inputs exceeds the budget "
                    f"{policy.max_latency_ms:.2f} ms")
    if cand_latencies_ms and run_latencies_ms and policy.max_latency_ratio is not None:
        a = float(np.median(cand_latencies_ms))
        b = float(np.median(run_latencies_ms))
        if b > 0 and a / b > policy.max_latency_ratio and a - b > NOISE_FLOOR_MS:
            return (f"median invoke latency {a:.3f} ms is {a / b:.2f}x the running model's "
                    f"{b:.3f} ms on live inputs (policy {policy.max_latency_ratio:g}x)")
    if cand_peak_bytes is not None:
        if policy.max_memory_bytes is not None and cand_peak_bytes > policy.max_memory_bytes:
            return (f"peak memory {cand_peak_bytes >> 20} MiB on live inputs exceeds the budget "
                    f"{policy.max_memory_bytes >> 20} MiB")
        if policy.max_memory_ratio is not None and run_peak_bytes is not None:
            ratio = max(cand_peak_bytes, MEMORY_FLOOR_BYTES) / max(run_peak_bytes,
                                                                   MEMORY_FLOOR_BYTES)
            if ratio > policy.max_memory_ratio:
                return (f"peak memory is {ratio:.2f}x the running model's on live inputs "
                        f"(policy {policy.max_memory_ratio:g}x)")
    return None


def decide_shadow(rule: ShadowRule, samples: int, agreed: int, elapsed_s: float,
                  breach: str | None = None) -> ShadowDecision:
    """Promote, reject or keep waiting, from the tallies so far (pure)."""
    if breach:
        return ShadowDecision("reject", f"shadow: {breach}", samples, agreed)
    if samples >= rule.min_samples:
        share = agreed / samples
        if share >= rule.min_agreement:
            return ShadowDecision(
                "promote", f"shadow: agreement {share:.1%} with the running model over "
                f"{samples} live samples meets the policy's {rule.min_agreement:.1%}",
                samples, agreed)
        return ShadowDecision(
            "reject", f"shadow: the candidate agrees with the running model on {share:.1%} "
            f"of {samples} live samples; the policy needs {rule.min_agreement:.1%}",
            samples, agreed)
    if elapsed_s >= rule.max_wait_s:
        action: ShadowAction = "promote" if rule.on_timeout == "promote" else "reject"
        return ShadowDecision(
            action, f"shadow: only {samples} of {rule.min_samples} live samples within "
            f"{rule.max_wait_s:g}s; policy on_timeout = {rule.on_timeout}", samples, agreed)
    return ShadowDecision("wait", f"shadow: {samples} of {rule.min_samples} live samples so far",
                          samples, agreed)
