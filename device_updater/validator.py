"""The agent's validation collaborator: an adapter from the update cycle to
:mod:`device_updater.validation` (holdout measurement in child processes + the signed policy).

The agent only needs "accept or reject, with reasons"; everything about runners, caches and
policies stays behind :class:`Validator`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from device_updater.config import Config
from device_updater.slots import ModelSummary, SlotInfo, SlotStore

log = logging.getLogger("edge_updater")


@dataclass(frozen=True)
class ValidationOutcome:
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class Validator(Protocol):
    """Runs the candidate (and the current model) on the holdout set and applies the policy."""

    def __call__(self, slots: SlotStore, candidate_slot: str, candidate: ModelSummary,
                 current: SlotInfo | None) -> ValidationOutcome: ...


def accept_all_validator(slots: SlotStore, candidate_slot: str, candidate: ModelSummary,
                         current: SlotInfo | None) -> ValidationOutcome:
    """No holdout set configured: accept (the trial still guards the switch)."""
    return ValidationOutcome(True, ["no holdout set configured: validation skipped"])


class HoldoutValidator:
    """The quality gate: candidate and running model measured on the holdout set in a
    time- and memory-limited child process; the signed policy decides.

    The plaintext models are exported to a private directory under the runtime dir (tmpfs)
    and removed afterwards. A runner crash, a timeout or a missing runtime rejects the candidate.
    """

    def __init__(self, holdout_path: Path, *, runtime_dir: Path, cache_path: Path,
                 timeout: float = 120.0,
                 external: dict[str, list[str]] | None = None) -> None:
        self.holdout_path = holdout_path
        self.runtime_dir = runtime_dir
        self.cache_path = cache_path
        self.timeout = timeout
        self.external = external

    def __call__(self, slots: SlotStore, candidate_slot: str, candidate: ModelSummary,
                 current: SlotInfo | None) -> ValidationOutcome:
        # The whole gate (docs/validation.md): both models measured live in one worker so the
        # latency comparison is interleaved; per-class, slice, I/O-contract and resource rules.
        from device_updater.errors import ValidationError
        from device_updater.validation.device import validate_slots

        try:
            accepted, reasons, details = validate_slots(
                slots, candidate_slot, candidate, current, holdout_path=self.holdout_path,
                runtime_dir=self.runtime_dir, timeout=self.timeout, external=self.external)
        except ValidationError as exc:
            return ValidationOutcome(False, [str(exc)])
        return ValidationOutcome(accepted, reasons, details)


def make_validator(config: Config) -> Validator:
    if config.holdout_dir is None:
        return accept_all_validator
    external = ({fmt: list(config.external_command)
                 for fmt in ("onnx", "tflite", "tflm", "edgetpu", "tensorrt", "raw")}
                if config.external_command else None)
    return HoldoutValidator(config.holdout_dir, runtime_dir=config.runtime_dir,
                            cache_path=config.state_dir / "validation-cache.json",
                            timeout=config.validation_timeout_s, external=external)

