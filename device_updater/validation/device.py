"""The gate as the daemon calls it: export both slots, run the gate, fit the evidence in an event.

The daemon's ``HoldoutValidator`` only has to call :func:`validate_slots` and wrap the triple in
its ``ValidationOutcome`` (the exact change is in the module doc of ``gate`` and the report of
issue 10); nothing here imports the daemon.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_updater.validation.gate import run_gate
from device_updater.validation.holdout import load_holdout
from device_updater.validation.policy import parse_device_policy
from device_updater.validation.runners import runner_for

if TYPE_CHECKING:
    from device_updater.slots import ModelSummary, SlotInfo, SlotStore

#: The validation event must stay well inside the protocol's event size limit.
MAX_DETAIL_BYTES = 12 * 1024


def validate_slots(slots: SlotStore, candidate_slot: str, candidate: ModelSummary,
                   current: SlotInfo | None, *, holdout_path: Path, runtime_dir: Path,
                   timeout: float = 120.0,
                   external: Mapping[str, Sequence[str]] | None = None,
                   latency_budget_s: float = 3.0) -> tuple[bool, list[str], dict[str, Any]]:
    """(accepted, reasons, event details) for the candidate in ``candidate_slot`` against the
    active slot ``current`` (None on a first install).

    Raises :class:`~device_updater.errors.ValidationError` when no verdict can be reached
    (malformed policy, bad holdout, runtime missing, the running model failing); the daemon
    rejects the candidate with that message, as it does today.
    """
    policy = parse_device_policy(candidate.policy)
    holdout = load_holdout(holdout_path, task=policy.task)
    with contextlib.ExitStack() as stack:
        cand = stack.enter_context(slots.exported(candidate_slot, runtime_dir))
        running = None
        if current is not None:
            running = stack.enter_context(slots.exported(current.name, runtime_dir))
        result = run_gate(
            cand, candidate.format, running, current.format if current else None, holdout,
            policy, timeout=timeout, runner=runner_for(candidate.format, external=external),
            running_runner=runner_for(current.format, external=external) if current else None,
            latency_budget_s=latency_budget_s)
    failed = [c for c in result.verdict.checks if c.status == "fail"]
    reasons = [f"{c.rule}: {c.message}" for c in failed] or [
        f"all {sum(c.status == 'pass' for c in result.verdict.checks)} rules passed"]
    reasons += [f"skipped {c.rule}: {c.message}" for c in result.verdict.checks
                if c.status == "skipped"]
    details: dict[str, Any] = {"passed": result.accepted, "metric": policy.metric,
                               "checks": compact_checks(result.verdict.to_dict())}
    if result.evidence is not None:  # the server's validation alert reads value/min
        details["value"] = result.evidence.metric.candidate.value
        if policy.min is not None and not policy.lower_is_better:
            details["min"] = policy.min
    return result.accepted, reasons, details


def compact_checks(verdict: Mapping[str, Any], limit: int = MAX_DETAIL_BYTES) -> list[Any]:
    """Checks as short rows (failures first), cut to fit ``limit`` bytes of JSON."""
    rows = []
    for c in sorted(verdict.get("checks", []), key=lambda c: c["status"] != "fail"):
        rows.append({k: c[k] for k in ("rule", "subject", "status", "value", "running", "ci",
                                       "limit") if c.get(k) is not None})
    while rows and len(json.dumps(rows)) > limit:
        rows.pop()
    return rows
