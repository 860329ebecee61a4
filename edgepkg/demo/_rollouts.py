"""Driving rollouts over the operator API and playing each device's inference app during a
trial (it reports healthy through ``edge-updater report-health``, as a real app would)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from edgepkg.demo import _devices
from edgepkg.demo._procs import DemoStepError, ProcessSet
from edgepkg.demo._server import Server

Log = Callable[[str], None]


@dataclass
class Tracker:
    rollout_id: str
    version: str
    stages: list[float]
    stages_seen: list[int] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)

    def observe(self, ro: dict[str, Any]) -> None:
        self.last = ro
        stage = int(ro.get("stage", 0))
        if not self.stages_seen or self.stages_seen[-1] != stage:
            self.stages_seen.append(stage)


def canaries(n_devices: int, percent: float) -> int:
    """How many devices the server admits to a first stage (``ceil(N * p / 100)``, at least 1)."""
    return max(1, math.ceil(n_devices * percent / 100 - 1e-9))


class Conductor:
    """Starts a rollout and waits for it to reach a status, answering trials meanwhile."""

    def __init__(
        self,
        server: Server,
        devices: list[_devices.Device],
        procs: ProcessSet,
        model: str,
        log: Log,
        *,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.server = server
        self.by_id = {d.device_id: d for d in devices}
        self.procs = procs
        self.model = model
        self.log = log
        self.pool = pool
        self._reported: dict[tuple[str, str], Future[None]] = {}

    def start(self, version: str, stages: list[float], **extra: Any) -> Tracker:
        spec = {
            "model": self.model,
            "version": version,
            "stages": [{"percent": p, "min_soak_seconds": 0} for p in stages],
            **extra,
        }
        ro = self.server.create_rollout(spec)
        t = Tracker(ro["id"], version, stages)
        t.observe(ro)
        return t

    def _answer_trials(self) -> None:
        for dev in self.server.devices():
            d = self.by_id.get(dev["device_id"])
            version = (dev.get("models") or {}).get(self.model)
            if d is None or dev.get("state") != "trial" or not version:
                continue
            key = (d.device_id, version)
            fut = self._reported.get(key)
            if fut is not None and not fut.done():
                continue
            if fut is not None and fut.exception() is None:
                continue
            self._reported[key] = self.pool.submit(
                _devices.report_healthy, d, self.model, version, 0.2, 200
            )

    def wait(
        self, t: Tracker, done: Callable[[dict[str, Any]], bool], *, timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last_note = ""
        while True:
            dead = self.procs.dead()
            if dead:
                raise DemoStepError(f"processes exited unexpectedly: {', '.join(dead)}")
            ro = self.server.rollout(t.rollout_id)
            t.observe(ro)
            note = (
                f"stage {ro['stage']}/{len(t.stages)} ({ro['stage_percent']:g}%) "
                f"{ro['status']}: committed {ro['totals']['committed']}, "
                f"failed {ro['totals']['failed']}"
            )
            if note != last_note:
                self.log(f"    {t.version}: {note}")
                last_note = note
            if done(ro):
                return ro
            if ro["status"] in ("aborted", "paused", "completed"):
                raise DemoStepError(
                    f"{what}: rollout {t.rollout_id} is unexpectedly {ro['status']} "
                    f"({ro.get('reason') or note}); device reasons: {self._reasons(t.version)}"
                )
            if time.monotonic() > deadline:
                raise DemoStepError(
                    f"{what}: rollout {t.rollout_id} still {ro['status']} after {timeout:.0f} s "
                    f"({note}); device reasons: {self._reasons(t.version)}"
                )
            self._answer_trials()
            time.sleep(0.5)

    def _reasons(self, version: str) -> str:
        """Why devices refused ``version`` (from their events on the server), for error text."""
        reasons: list[str] = []
        for d in self.by_id.values():
            for e in self.server.events(d.device_id):
                if e.get("version") == version and e.get("type") in (
                    "rejected",
                    "rolled_back",
                    "verification_failed",
                ):
                    reasons.append(f"{d.name}: {e['type']}: {e.get('details', {}).get('reason')}")
                    break
        return "; ".join(reasons[:5]) or "none reported"

    def wait_devices_on(self, version: str, count: int, timeout: float) -> None:
        """After a rollout completes: every device reports ``version`` at its next check-in."""
        deadline = time.monotonic() + timeout
        while True:
            devs = self.server.devices()
            on = sum(
                1
                for d in devs
                if (d.get("models") or {}).get(self.model) == version
                and d.get("state") in ("committed", "idle")
            )
            if on >= count:
                return
            if time.monotonic() > deadline:
                raise DemoStepError(f"only {on} of {count} devices report {version} committed")
            self._answer_trials()
            time.sleep(0.5)
