"""One shadow batch: live samples through the running model and the candidate (I/O).

Both models run in the validation worker (:func:`device_updater.validation.gate.run_model`):
a separate, time-limited process per model, ``nice``'d so the inference app keeps the CPU;
the candidate's runner gets the policy's memory budget as its limit (a memory bomb fails
fast). The outputs are compared by :func:`.decision.agreeing`, budgets by
:func:`.decision.budget_breach`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_updater.shadow.decision import agreeing, budget_breach
from device_updater.validation.gate import _output, memory_budget, run_model
from device_updater.validation.holdout import Holdout
from device_updater.validation.runners import runner_for
from edgepkg.policy import Policy


@dataclass(frozen=True)
class BatchResult:
    samples: int
    agreed: int
    breach: str | None
    candidate_p95_ms: float
    running_p95_ms: float


def shadow_batch(candidate: Path, cand_fmt: str, running: Path, running_fmt: str,
                 inputs: np.ndarray, policy: Policy, *, workdir: Path, timeout: float = 120.0,
                 nice: int = 10,
                 external: Mapping[str, Sequence[str]] | None = None) -> BatchResult:
    """Run ``inputs`` ``[k, ...]`` through both models; count agreement, check budgets.

    Raises :class:`~device_updater.errors.ValidationError` (crash, timeout, memory limit,
    an input the model does not take): the daemon rejects the candidate with it.
    """
    assert policy.shadow is not None
    samples = Holdout(inputs=inputs, labels=np.zeros(inputs.shape[0], dtype=np.int64),
                      digest=hashlib.sha256(inputs.tobytes()).hexdigest(), task=policy.task)
    options = {"nice": nice}
    run_res = run_model(running, running_fmt, samples, timeout=timeout, workdir=workdir,
                        runner=runner_for(running_fmt, external=external, options=options))
    cand_res = run_model(candidate, cand_fmt, samples, timeout=timeout, workdir=workdir,
                         runner=runner_for(cand_fmt, external=external, options=options),
                         memory_budget_bytes=memory_budget(policy, run_res))
    _, y_cand = _output(cand_res, policy)
    _, y_run = _output(run_res, policy)
    agreed = agreeing(policy.task, y_cand, y_run, tolerance=policy.shadow.tolerance)
    breach = budget_breach(policy, cand_latencies_ms=cand_res.latencies_ms,
                           run_latencies_ms=run_res.latencies_ms,
                           cand_peak_bytes=cand_res.peak_bytes, run_peak_bytes=run_res.peak_bytes)
    return BatchResult(int(inputs.shape[0]), agreed, breach, cand_res.p95_ms, run_res.p95_ms)
