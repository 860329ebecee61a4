"""Holdout validation: measure a model in a separate process, apply the signed policy.

Public API::

    holdout = load_holdout(Path("/var/lib/edge-updater/holdout"))     # or holdout.npz
    result  = measure(model_path, "onnx", holdout, timeout=60)        # -> ValidationResult
    current = cache.get_or_measure(version, sha256, ...)              # ResultCache
    decision = evaluate_policy(result, current, manifest_policy)      # -> PolicyDecision

The full quality gate (per-class, slices, I/O contract, memory, interleaved latency; the same
code ``edge-updater validate`` runs)::

    policy  = parse_device_policy(manifest_policy)
    holdout = load_holdout(path, task=policy.task)
    result  = run_gate(candidate_path, fmt, running_path, running_fmt, holdout, policy)
    result.accepted, result.verdict.reasons, result.to_dict()

``measure`` raises a :class:`~device_updater.errors.ValidationError` subclass when no result can
be produced (runner crashed / timed out / runtime missing / bad holdout); the daemon turns that
into a REJECTED candidate with the message as the reason. The daemon itself never loads a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from device_updater._fsutil import atomic_write_json, file_lock, read_limited
from device_updater.errors import ValidationError
from device_updater.validation.gate import GateResult, ModelRun, run_gate, run_model
from device_updater.validation.holdout import Holdout, load_holdout, make_holdout
from device_updater.validation.judge import Check, Verdict
from device_updater.validation.policy import (
    Policy,
    PolicyDecision,
    evaluate_policy,
    parse_device_policy,
)
from device_updater.validation.result import (
    METRICS,
    ValidationResult,
    compute_metrics,
    percentile,
)
from device_updater.validation.runners import (
    BuiltinRunner,
    ExternalCommandRunner,
    Runner,
    RunOutput,
    runner_for,
)

__all__ = [
    "METRICS",
    "BuiltinRunner",
    "Check",
    "ExternalCommandRunner",
    "GateResult",
    "Holdout",
    "ModelRun",
    "Policy",
    "PolicyDecision",
    "ResultCache",
    "RunOutput",
    "Runner",
    "ValidationResult",
    "Verdict",
    "evaluate_policy",
    "load_holdout",
    "make_holdout",
    "measure",
    "parse_device_policy",
    "run_gate",
    "run_model",
    "runner_for",
]


def measure(model_path: Path, fmt: str, holdout: Holdout, *, timeout: float = 120.0,
            runner: Runner | None = None, metric: str = "top1_accuracy",
            workdir: Path | None = None, version: str | None = None,
            sha256: str | None = None) -> ValidationResult:
    """Run ``model_path`` (plaintext, e.g. exported to the tmpfs runtime dir) on the holdout.

    The runner (default: built-in for ``fmt``) runs in a child process limited to ``timeout``
    seconds. ``version``/``sha256`` are recorded in the result (for the cache and events).
    """
    if metric not in METRICS:
        raise ValidationError(f"unknown metric {metric!r}; this device measures {sorted(METRICS)}")
    runner = runner or runner_for(fmt)
    with tempfile.TemporaryDirectory(prefix="edge-validate-", dir=workdir) as tmp:
        work = Path(tmp)
        inputs = work / "inputs.npy"
        np.save(inputs, holdout.inputs, allow_pickle=False)
        out = runner.run(Path(model_path), fmt, inputs, work, timeout=timeout)
    metrics = compute_metrics(out.outputs, holdout.labels)
    return ValidationResult(
        metric_name=metric, value=metrics[metric],
        latency_p50_ms=percentile(out.latencies_ms, 50),
        latency_p95_ms=percentile(out.latencies_ms, 95),
        n=holdout.n, metrics=metrics, runtime=out.runtime, version=version, sha256=sha256,
    )


class ResultCache:
    """Results of installed models per (version, sha256, holdout digest, metric), in one JSON
    file (atomic rewrites, last ``max_entries`` kept). Used for the *current* model, so it is
    measured once per version rather than before every candidate."""

    def __init__(self, path: Path, *, max_entries: int = 16) -> None:
        self.path = Path(path)
        self.max_entries = max_entries

    @staticmethod
    def key(version: str, sha256: str, holdout_digest: str, metric: str) -> str:
        return f"{version}|{sha256}|{holdout_digest}|{metric}"

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(read_limited(self.path, 1 << 20))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, version: str, sha256: str, holdout_digest: str,
            metric: str = "top1_accuracy") -> ValidationResult | None:
        item = self._load().get(self.key(version, sha256, holdout_digest, metric))
        if not isinstance(item, dict):
            return None
        try:
            return ValidationResult.from_dict(item)
        except ValidationError:
            return None

    def put(self, result: ValidationResult, holdout_digest: str) -> None:
        if result.version is None or result.sha256 is None:
            raise ValidationError("only results with a version and sha256 can be cached")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            data = self._load()
            data.pop(self.key(result.version, result.sha256, holdout_digest,
                              result.metric_name), None)
            data[self.key(result.version, result.sha256, holdout_digest,
                          result.metric_name)] = result.to_dict()
            items = list(data.items())[-self.max_entries:]
            atomic_write_json(self.path, dict(items))

    def get_or_measure(self, version: str, sha256: str, holdout: Holdout,
                       produce: Callable[[], ValidationResult],
                       metric: str = "top1_accuracy") -> ValidationResult:
        """Cached result, or ``produce()`` (e.g. export the active slot and ``measure``), cached."""
        hit = self.get(version, sha256, holdout.digest, metric)
        if hit is not None:
            return hit
        result = dataclasses.replace(produce(), version=version, sha256=sha256)
        with contextlib.suppress(ValidationError):
            self.put(result, holdout.digest)
        return result
