"""The trial after a switch: pure decision logic plus the persisted health log.

The inference app tells the updater how the new model does (``edge-updater report-health``,
which appends a :class:`HealthReport` to the :class:`HealthLog`). The daemon calls
:func:`evaluate_trial` with the reports and ``now``:

* **rollback** when the app reported ``max_failures`` failures, crash-looped (more than
  ``max_app_restarts`` ``started`` reports), or never confirmed healthy by the deadline
  (``deadline_seconds``, default ``max(2 * window_seconds, window_seconds + 60)``);
* **commit** when the app reported healthy at least once, at least ``min_inferences``
  inferences were reported, and ``window_seconds`` have passed since the switch;
* **wait** otherwise.

Only reports for the model on trial count: those whose ``version`` (and ``sha256`` when the
app gives it) match, made at or after the trial start. Before committing, the daemon also asks
the server whether the rollout was aborted meanwhile (not part of this pure logic).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from device_updater._fsutil import atomic_write_json, file_lock, read_limited
from device_updater.errors import HealthLogError

HealthStatus = Literal["healthy", "failing", "started"]
_STATUSES = ("healthy", "failing", "started")


@dataclass(frozen=True)
class TrialPolicy:
    window_seconds: float = 600.0
    min_inferences: int = 0
    max_failures: int = 1
    max_app_restarts: int = 3
    deadline_seconds: float | None = None

    @property
    def deadline(self) -> float:
        if self.deadline_seconds is not None:
            return self.deadline_seconds
        return max(2 * self.window_seconds, self.window_seconds + 60)


@dataclass(frozen=True)
class TrialState:
    """What is on trial and since when (from ``UpdateState``: model, version, candidate.sha256,
    trial_started_at)."""

    model: str
    version: str
    started_at: float
    sha256: str | None = None


@dataclass(frozen=True)
class HealthReport:
    """One report from the inference app.

    ``status``: ``healthy`` (serving fine), ``failing`` (errors / cannot load the model) or
    ``started`` (the app (re)started with this model: many of these means a crash loop).
    ``inferences``: inferences done *since the previous report* (summed over the trial).
    """

    time: float
    status: HealthStatus
    model: str | None = None
    version: str | None = None
    sha256: str | None = None
    inferences: int = 0
    errors: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    metric: float | None = None
    message: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthReport:
        """Parse a report (hostile input); raise :class:`HealthLogError`."""
        try:
            if not isinstance(data, Mapping):
                raise TypeError("a report must be an object")
            status = data.get("status")
            if status not in _STATUSES:
                raise ValueError(f"status must be one of {_STATUSES}, not {status!r}")
            t = float(data["time"])
            if not math.isfinite(t):
                raise ValueError("time must be finite")
            ints = {k: int(data.get(k) or 0) for k in ("inferences", "errors")}
            if any(v < 0 or v > 1 << 40 for v in ints.values()):
                raise ValueError("inferences/errors out of range")
            floats: dict[str, float | None] = {}
            for k in ("latency_p50_ms", "latency_p95_ms", "metric"):
                v = data.get(k)
                floats[k] = None if v is None else float(v)
                if floats[k] is not None and not math.isfinite(floats[k]):  # type: ignore[arg-type]
                    raise ValueError(f"{k} must be finite")
            strs: dict[str, str | None] = {}
            for k in ("model", "version", "sha256", "message"):
                v = data.get(k)
                if v is not None and (not isinstance(v, str) or len(v) > 1024):
                    raise ValueError(f"{k} must be a short string")
                strs[k] = v
            return cls(time=t, status=status, **ints, **floats, **strs)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise HealthLogError(f"bad health report: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrialDecision:
    action: Literal["commit", "rollback", "wait"]
    reason: str
    inferences: int = 0
    failures: int = 0


def relevant_report(trial: TrialState, r: HealthReport) -> bool:
    """Whether ``r`` is about the model on trial (its version/sha256, since the start)."""
    if r.time < trial.started_at:
        return False
    if r.model is not None and r.model != trial.model:
        return False
    if r.version is not None and r.version != trial.version:
        return False
    return not (r.sha256 is not None and trial.sha256 is not None and r.sha256 != trial.sha256)


def evaluate_trial(trial: TrialState, reports: Sequence[HealthReport], now: float,
                   policy: TrialPolicy = TrialPolicy()) -> TrialDecision:
    """Decide commit / rollback / wait for the model on trial (pure)."""
    mine = [r for r in reports if relevant_report(trial, r)]
    failures = [r for r in mine if r.status == "failing"]
    starts = sum(1 for r in mine if r.status == "started")
    healthy = [r for r in mine if r.status == "healthy"]
    inferences = sum(r.inferences for r in mine)
    elapsed = max(0.0, now - trial.started_at)  # a clock stepping back never ends a trial early

    if len(failures) >= max(1, policy.max_failures):
        last = failures[-1].message or "no message"
        return TrialDecision("rollback", f"the app reported {len(failures)} failure(s) during "
                             f"the trial (last: {last})", inferences, len(failures))
    if starts > policy.max_app_restarts:
        return TrialDecision("rollback", f"crash loop: the app restarted {starts} times during "
                             "the trial", inferences, len(failures))
    if healthy and inferences >= policy.min_inferences and elapsed >= policy.window_seconds:
        return TrialDecision("commit", f"healthy after {elapsed:.0f}s and {inferences} "
                             "inferences", inferences, len(failures))
    if elapsed >= policy.deadline:
        why = ("no healthy report" if not healthy
               else f"only {inferences} of {policy.min_inferences} inferences")
        return TrialDecision("rollback", f"never confirmed within {policy.deadline:.0f}s: {why}",
                             inferences, len(failures))
    return TrialDecision("wait", f"trial running ({elapsed:.0f}s, {inferences} inferences, "
                         f"{'healthy' if healthy else 'not yet confirmed'})", inferences,
                         len(failures))


class HealthLog:
    """Health reports persisted as one JSON file rewritten atomically (bounded to ``max_reports``,
    oldest dropped). Safe for the app's CLI and the daemon at once (``flock``)."""

    MAX_BYTES = 4 << 20

    def __init__(self, path: Path, *, max_reports: int = 500) -> None:
        self.path = Path(path)
        self.max_reports = max_reports

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return file_lock(self.path.with_name(self.path.name + ".lock"))

    def _load(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(read_limited(self.path, self.MAX_BYTES))
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            return []  # a damaged log loses old reports only; never blocks the updater
        return data if isinstance(data, list) else []

    def append(self, report: HealthReport) -> None:
        """Persist one report (validated) durably."""
        HealthReport.from_dict(report.to_dict())
        with self._lock():
            items = self._load()
            items.append(report.to_dict())
            atomic_write_json(self.path, items[-self.max_reports:], 0o600)

    def read(self, since: float | None = None) -> list[HealthReport]:
        """Reports (oldest first), optionally only those at or after ``since``; bad ones skipped."""
        out = []
        for item in self._load():
            try:
                r = HealthReport.from_dict(item)
            except HealthLogError:
                continue
            if since is None or r.time >= since:
                out.append(r)
        return out

    def clear(self) -> None:
        with self._lock():
            atomic_write_json(self.path, [], 0o600)
