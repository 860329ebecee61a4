"""The quality gate: run candidate and running model on the holdout, score, judge.

This is the one code path for the daemon's validation and ``edge-updater validate``::

    result = run_gate(candidate, "onnx", running, "tflite", holdout, policy, timeout=120)
    result.verdict.accepted, result.verdict.reasons, result.to_dict()

Steps: the running model runs first (its peak memory sets the candidate's memory budget when
the policy has ``max_memory_ratio``); the candidate runs under the policy's memory limit, so a
memory bomb fails fast; both are scored on the same samples (overall, per class, per slice,
paired bootstrap); both models are then timed interleaved in one worker (ABAB) for the latency
ratio; :func:`~device_updater.validation.judge.judge` decides.

Failures the candidate causes (it breaks the I/O contract, exceeds its memory budget, crashes,
hangs, gives outputs the metric cannot read) are a rejection with the reason. Failures of the
setup (runtime missing, holdout unreadable, the running model itself failing) raise a
:class:`~device_updater.errors.ValidationError`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_updater.errors import (
    RunnerFailedError,
    RuntimeNotInstalledError,
    ValidationError,
)
from device_updater.validation import metrics as mx
from device_updater.validation.contract import compare
from device_updater.validation.holdout import Holdout
from device_updater.validation.judge import (
    MEMORY_FLOOR_BYTES,
    Check,
    ClassStats,
    Evidence,
    Latency,
    Measured,
    Verdict,
    judge,
)
from device_updater.validation.runners import (
    BuiltinRunner,
    IoContractError,
    MemoryBudgetError,
    Runner,
    runner_for,
)
from edgepkg.policy import Policy


@dataclass(frozen=True)
class ModelRun:
    """One model run on the holdout: its outputs by name and what the runner measured."""

    outputs: dict[str, np.ndarray]
    signature: dict[str, Any] | None
    latencies_ms: list[float]
    runtime: str
    peak_bytes: int | None
    model_bytes: int

    @property
    def p95_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else 0.0


@dataclass(frozen=True)
class GateResult:
    verdict: Verdict
    evidence: Evidence | None
    candidate: ModelRun | None
    running: ModelRun | None
    notes: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.verdict.accepted

    def to_dict(self) -> dict[str, Any]:
        out = self.verdict.to_dict()
        for side, run in (("candidate", self.candidate), ("running", self.running)):
            if run is not None:
                out[side] = {"runtime": run.runtime, "p95_ms": run.p95_ms,
                             "peak_memory_bytes": run.peak_bytes,
                             "model_bytes": run.model_bytes, "signature": run.signature}
        return out


def _write_inputs(holdout: Holdout, work: Path) -> Path:
    if holdout.named_inputs:
        path = work / "inputs.npz"
        np.savez(path, **holdout.named_inputs)  # type: ignore[arg-type]  # numpy stub: kwargs
    else:
        path = work / "inputs.npy"
        np.save(path, holdout.inputs, allow_pickle=False)
    return path


def run_model(model: Path, fmt: str, holdout: Holdout, *, runner: Runner | None = None,
              timeout: float = 120.0, workdir: Path | None = None,
              memory_budget_bytes: int | None = None) -> ModelRun:
    """Run one model on the holdout in a child process (see ``_worker``)."""
    runner = runner or runner_for(fmt)
    size = Path(model).stat().st_size
    with tempfile.TemporaryDirectory(prefix="edge-gate-", dir=workdir) as tmp:
        work = Path(tmp)
        inputs = _write_inputs(holdout, work)
        if isinstance(runner, BuiltinRunner):
            opts = {"memory_budget_bytes": memory_budget_bytes} if memory_budget_bytes else {}
            obj, arrays, _ = runner.request(
                {"mode": "run", "format": fmt, "model": str(model), "inputs": str(inputs)},
                work, timeout=timeout, what=f"{fmt} runner for {Path(model).name}",
                options=opts)
            sig = obj.get("signature") if isinstance(obj.get("signature"), dict) else None
            names = [str(s["name"]) for s in (sig or {}).get("outputs", [])]
            if len(names) != len(arrays):
                raise RunnerFailedError(f"{fmt} runner returned {len(arrays)} outputs for "
                                        f"{len(names)} declared")
            mem = obj.get("memory") or {}
            peak = mem.get("peak_over_baseline_bytes")
            lat = [float(v) for v in obj.get("latencies_ms") or []]
            return ModelRun(dict(zip(names, arrays, strict=True)), sig, lat,
                            str(obj.get("runtime") or fmt),
                            int(peak) if isinstance(peak, int) else None, size)
        if holdout.named_inputs:
            raise RuntimeNotInstalledError("external runners take one unnamed input array; "
                                           "this holdout has named inputs")
        out = runner.run(Path(model), fmt, inputs, work, timeout=timeout)
        return ModelRun({"output": out.outputs}, None, list(out.latencies_ms), out.runtime,
                        None, size)


def run_abab(candidate: Path, cand_fmt: str, running: Path, running_fmt: str, holdout: Holdout,
             *, runner: BuiltinRunner | None = None, timeout: float = 120.0,
             budget_s: float = 3.0, workdir: Path | None = None,
             options: dict[str, Any] | None = None) -> Latency:
    """Interleaved invoke timing of both models in one worker process (see ``_worker``)."""
    runner = runner or BuiltinRunner()
    with tempfile.TemporaryDirectory(prefix="edge-abab-", dir=workdir) as tmp:
        work = Path(tmp)
        inputs = _write_inputs(holdout, work)
        _, (a, b), _ = runner.request(
            {"mode": "abab", "inputs": str(inputs),
             "models": [{"format": cand_fmt, "model": str(candidate)},
                        {"format": running_fmt, "model": str(running)}]},
            work, timeout=min(timeout, budget_s * 4 + 60), what="latency (ABAB) runner",
            options={"budget_s": budget_s, **(options or {})})
    return latency_from_pairs(a, b)


def latency_from_pairs(a: np.ndarray, b: np.ndarray, stop: str = "") -> Latency:
    """Median of paired log ratios with a distribution-free 95% CI (order statistics)."""
    ok = (a > 0) & (b > 0)
    d = np.sort(np.log(a[ok] / b[ok]))
    n = d.size
    if n == 0:
        return Latency(1.0, 0.0, float("inf"), 0, 0.0, 0.0, stop)
    k = max(int(np.floor(n / 2 - mx.Z95 * np.sqrt(n) / 2)), 0)
    return Latency(float(np.exp(np.median(d))), float(np.exp(d[k])),
                   float(np.exp(d[min(n - 1 - k, n - 1)])), int(n),
                   float(np.median(a)), float(np.median(b)), stop)


# --- scoring -------------------------------------------------------------------------------------


def _output(run: ModelRun, policy: Policy) -> tuple[str, np.ndarray]:
    if policy.output is not None:
        if policy.output not in run.outputs:
            raise mx.ScoringError(f"policy output {policy.output!r} is not an output of the "
                                  f"model ({sorted(run.outputs)})")
        return policy.output, run.outputs[policy.output]
    if len(run.outputs) != 1:
        raise mx.ScoringError(f"the model has outputs {list(run.outputs)}; set output = NAME "
                              "in the policy to say which one the metric reads")
    return next(iter(run.outputs.items()))


def _p_within(p: mx.Paired, limit: float | None) -> float | None:
    if limit is None or p.diffs is None:
        return None
    return float(np.mean(p.diffs <= limit + 1e-12))


def _measured(name: str, p: mx.Paired, limit: float | None) -> Measured:
    return Measured(name, p.candidate, p.running, _p_within(p, limit))


def score(policy: Policy, holdout: Holdout, cand: ModelRun,
          running: ModelRun | None) -> Evidence:
    """Evidence for :func:`judge` (raises ScoringError when the candidate cannot be scored)."""
    n = holdout.n
    metric, lower = policy.metric, policy.lower_is_better
    task = policy.task
    has_run = running is not None
    notes: list[str] = []
    classes: list[ClassStats] = []
    fn: Callable[[np.ndarray, int], float]
    scored: list[str] = []
    if task == "detection":
        names = (policy.detection.boxes, policy.detection.scores, policy.detection.classes)
        scored = list(names)
        gt = holdout.boxes if holdout.boxes is not None else np.zeros((0, 6))
        dets = [mx.match(mx.detections(cand.outputs, names, n), gt, n)]
        if running is not None:
            dets.append(mx.match(mx.detections(running.outputs, names, n), gt, n))

        def fn(idx: np.ndarray, m: int) -> float:
            return mx.map50(dets[m], idx)
    else:
        oname, y = _output(cand, policy)
        scored = [oname]
        ys = [y]
        if running is not None:
            ys.append(_output(running, policy)[1])
        labels = holdout.labels
        if task == "classification":
            preds = []
            for k, arr in enumerate(ys):
                ids, ncls = mx.class_ids(oname, arr, n)
                if ncls is not None and k == 0 and labels.size and labels.max() >= ncls:
                    raise mx.ScoringError(f"output {oname!r} scores {ncls} classes but the "
                                          f"holdout labels go up to {int(labels.max())}")
                preds.append(ids)
            label_set = [int(c) for c in np.unique(labels)]
            if metric == "macro_f1":
                def fn(idx: np.ndarray, m: int) -> float:
                    return mx.macro_f1(preds[m][idx], labels[idx], label_set)
            elif metric == "agreement":
                if running is None:
                    notes.append("agreement needs a running model: scored as 1.0")

                def fn(idx: np.ndarray, m: int) -> float:
                    if m == 1 or len(preds) < 2:
                        return 1.0
                    return float(np.mean(preds[0][idx] == preds[1][idx]))
            else:
                hits = [(pr == labels).astype(np.float64) for pr in preds]

                def fn(idx: np.ndarray, m: int) -> float:
                    return float(hits[m][idx].mean())
            pc = policy.per_class
            for c in label_set:
                idx = np.flatnonzero(labels == c)
                def recall(i: np.ndarray, m: int, c: int = c) -> float:
                    return float(np.mean(preds[m][i] == c))

                rec = mx.paired(recall, idx, has_running=has_run)
                predicted = preds[0] == c
                prec = mx.proportion(labels[predicted] == c)
                classes.append(ClassStats(c, int(idx.size), _measured(
                    f"recall[class {c}]", rec, pc.max_recall_drop if pc else None), prec))
        elif task == "regression":
            vals = [mx.regression_values(oname, arr, labels) for arr in ys]
            tgt = labels.astype(np.float64).reshape(vals[0].shape)
            if metric == "rmse":
                def fn(idx: np.ndarray, m: int) -> float:
                    return float(np.sqrt(np.mean((vals[m][idx] - tgt[idx]) ** 2)))
            else:
                def fn(idx: np.ndarray, m: int) -> float:
                    return float(np.mean(np.abs(vals[m][idx] - tgt[idx])))
        else:  # anomaly
            sc = []
            for arr in ys:
                if arr.shape not in ((n,), (n, 1)) or arr.dtype.kind not in "iuf":
                    raise mx.ScoringError(f"output {oname!r} has shape {list(arr.shape)} "
                                          f"{arr.dtype}; AUROC needs one score per sample")
                sc.append(arr.reshape(n).astype(np.float64))

            def fn(idx: np.ndarray, m: int) -> float:
                return mx.auroc(sc[m][idx], labels[idx])
    everything = np.arange(n)
    main = mx.paired(fn, everything, has_running=has_run, lower_is_better=lower)
    slices = {}
    for rule in policy.slices:
        mask = holdout.slices.get(rule.tag)
        if mask is not None:
            sp = mx.paired(fn, np.flatnonzero(mask), has_running=has_run,
                           lower_is_better=lower)
            slices[rule.tag] = _measured(f"{metric} on slice {rule.tag}", sp,
                                         rule.max_regression)
    io = None
    if running is not None and cand.signature is not None and running.signature is not None:
        io = compare(cand.signature, running.signature, scored_outputs=scored)
    return Evidence(metric=_measured(metric, main, policy.max_regression),
                    candidate_p95_ms=cand.p95_ms, slices=slices, classes=classes,
                    io_problems=io, candidate_peak_bytes=cand.peak_bytes,
                    running_peak_bytes=running.peak_bytes if running else None,
                    candidate_model_bytes=cand.model_bytes, notes=notes)


# --- the gate ------------------------------------------------------------------------------------


def _rejected(rule: str, message: str, notes: list[str],
              cand: ModelRun | None = None, running: ModelRun | None = None) -> GateResult:
    return GateResult(Verdict(False, [Check(rule, "candidate", "fail", message)], notes),
                      None, cand, running, notes)


def memory_budget(policy: Policy, running: ModelRun | None) -> int | None:
    """The candidate runner's memory budget: the absolute limit, or the ratio over the running
    model's peak (whichever is smaller), with head-room so the judge, not the kill, decides
    borderline cases."""
    budgets = []
    if policy.max_memory_bytes is not None:
        budgets.append(policy.max_memory_bytes)
    if policy.max_memory_ratio is not None and running is not None and \
            running.peak_bytes is not None:
        budgets.append(int(max(running.peak_bytes, MEMORY_FLOOR_BYTES) * policy.max_memory_ratio))
    return min(budgets) if budgets else None


def run_gate(candidate: Path, cand_fmt: str, running: Path | None, running_fmt: str | None,
             holdout: Holdout, policy: Policy, *, timeout: float = 120.0,
             runner: Runner | None = None, running_runner: Runner | None = None,
             workdir: Path | None = None, latency_budget_s: float = 3.0,
             running_result: ModelRun | None = None) -> GateResult:
    """Judge ``candidate`` against ``running`` (None: first install) on ``holdout``.

    ``running_result``: a cached :class:`ModelRun` of the running model (skips its run; the
    ABAB latency run still needs ``running``'s file).
    """
    if policy.task != holdout.task:
        raise ValidationError(f"the policy metric {policy.metric} needs a {policy.task} "
                              f"holdout, this one was loaded for {holdout.task}")
    notes: list[str] = []
    cand_runner = runner or runner_for(cand_fmt)
    run_res = running_result
    if run_res is None and running is not None:
        rfmt = running_fmt or cand_fmt
        try:
            run_res = run_model(running, rfmt, holdout, timeout=timeout, workdir=workdir,
                                runner=running_runner or runner_for(rfmt))
        except IoContractError as exc:
            raise ValidationError(f"the running model cannot be measured on this holdout: "
                                  f"{exc}") from None
    budget = memory_budget(policy, run_res)
    try:
        cand = run_model(candidate, cand_fmt, holdout, runner=cand_runner, timeout=timeout,
                         workdir=workdir, memory_budget_bytes=budget)
    except MemoryBudgetError as exc:
        return _rejected("memory budget", f"the candidate was stopped at its memory limit "
                         f"(budget {budget} bytes from the policy): {exc}", notes, None, run_res)
    except IoContractError as exc:
        return _rejected("holdout I/O contract", str(exc), notes, None, run_res)
    except RuntimeNotInstalledError:
        raise
    except RunnerFailedError as exc:
        return _rejected("runner", f"the candidate could not be run: {exc}", notes, None,
                         run_res)
    try:
        if run_res is not None:
            try:
                score(policy, holdout, run_res, None)
            except mx.ScoringError as exc:
                notes.append(f"the running model's output cannot be scored ({exc}): "
                             "relative rules not checked")
                run_res = None
        evidence = score(policy, holdout, cand, run_res)
    except mx.ScoringError as exc:
        return _rejected("scoring", str(exc), notes, cand, run_res)
    if (policy.max_latency_ratio is not None and running is not None and run_res is not None
            and isinstance(cand_runner, BuiltinRunner)):
        try:
            lat = run_abab(candidate, cand_fmt, running, running_fmt or cand_fmt, holdout,
                           runner=cand_runner, timeout=timeout, budget_s=latency_budget_s,
                           workdir=workdir)
            evidence = dataclasses.replace(evidence, latency=lat)
        except RunnerFailedError as exc:
            notes.append(f"interleaved latency run failed: {exc}")
    elif policy.max_latency_ratio is not None and run_res is not None and run_res.p95_ms > 0:
        # External runners: no shared process, so compare their own reported medians.
        a, b = np.asarray(cand.latencies_ms), np.asarray(run_res.latencies_ms)
        m = min(a.size, b.size)
        evidence = dataclasses.replace(evidence, latency=latency_from_pairs(a[:m], b[:m],
                                                                            "external"))
        notes.append("latency from separate runs (external runner), not interleaved")
    evidence = dataclasses.replace(evidence, notes=[*evidence.notes, *notes])
    return GateResult(judge(policy, evidence), evidence, cand, run_res, notes)
