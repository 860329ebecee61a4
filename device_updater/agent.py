"""The update orchestrator: one update cycle, start-up recovery, and the poll loop.

One cycle::

    flush queued events -> continue any update in progress -> check in (slots, state, health)
    -> for each assignment: Start -> DOWNLOADING (TUF refresh, delta or full target)
       -> VERIFYING (bundle signature with the token-held release keys, signed versions,
          requirements vs device facts, recipient) -> INSTALLING (decrypt through the token,
          apply the delta, SHA-256 vs the signed manifest, sealed into the inactive slot)
       -> VALIDATING (holdout) -> SWITCHING -> TRIAL (health reports; ask the server whether
          the rollout was aborted) -> COMMITTED, or REJECTED / ROLLED_BACK
    -> flush events

The agent is a thin I/O shell over the pure state machine (:mod:`device_updater.state`): each
state is saved *before* the action it names, every change of state is a transition (the
delta-to-full fallback included), and failures become events through the one table in
:mod:`device_updater.outcomes`. Start-up runs :func:`~device_updater.recovery.run_recovery` for
every model. Network failures never touch the running model: the cycle ends and the loop backs
off. Expired TUF metadata blocks new installs only.

All collaborators are passed in: keystore, HTTP session, validator, clock.

Public entries: :meth:`Agent.recover`, :meth:`Agent.run_cycle`, :meth:`Agent.apply_assignment`,
:meth:`Agent.manual_rollback`, :meth:`Agent.run`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from device_updater.checks import check_version_str, refuse_downgrade
from device_updater.config import Config
from device_updater.enrollment import read_enrollment
from device_updater.errors import (
    Error,
    SealedToOtherStateError,
    SlotError,
    TransportError,
    UpdateRefusedError,
)
from device_updater.events import EventQueue
from device_updater.facts import device_facts
from device_updater.http import DeviceAuth, DeviceClient
from device_updater.keystore import Keystore
from device_updater.layout import Layout, remove_stale_workdirs
from device_updater.outcomes import Action, classify
from device_updater.recovery import run_recovery
from device_updater.shadow.step import step_shadow
from device_updater.slots import SlotInfo, other_slot, remove_stale_exports
from device_updater.state import (
    FallBackToFull,
    GrantsRenewed,
    Phase,
    RollBack,
    Start,
)
from device_updater.steps import UpdateSteps
from device_updater.telemetry.service import for_agent as telemetry_for_agent
from device_updater.trial import HealthLog, HealthReport, TrialPolicy
from device_updater.validator import Validator, make_validator
from edgepkg.errors import Error as EdgepkgError
from edgepkg.protocol import Assignment

log = logging.getLogger("edge_updater")

_MAX_STEPS = 32  # per model and cycle: each step saves a new state or returns


@dataclass
class CycleReport:
    online: bool = False
    assignments: int = 0
    poll_interval: int | None = None
    in_trial: bool = False
    errors: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)  # model -> phase at cycle end


class Agent(UpdateSteps):
    """The updater for one device. ``run_cycle`` is one update cycle; ``run`` the daemon loop."""

    def __init__(
        self,
        config: Config,
        keystore: Keystore,
        *,
        session: requests.Session | None = None,
        validator: Validator | None = None,
        clock: Callable[[], float] = time.time,
        facts: dict[str, Any] | None = None,
        trial_policy: TrialPolicy | None = None,
        stop: threading.Event | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.keystore = keystore
        self.layout = Layout(config.state_dir)
        self.layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.enrollment = read_enrollment(self.layout)
        self.session = session or requests.Session()
        self.clock = clock
        self.validator = validator or make_validator(config)
        self.facts = facts if facts is not None else device_facts(config.facts)
        self.trial_policy = trial_policy or TrialPolicy(
            window_seconds=config.trial_window_s, min_inferences=config.trial_min_inferences,
            max_failures=config.trial_max_failures)
        self.stop = stop or threading.Event()
        self.rng = rng or random.Random()
        self.auth = DeviceAuth(self.enrollment.device_id, keystore.sign, clock=clock)
        self.client = DeviceClient(config.server_url, self.auth, session=self.session,
                                   timeout=(config.connect_timeout, config.read_timeout))
        self.events = EventQueue(self.layout.events)
        self.health = HealthLog(self.layout.health)
        self.last_error: str | None = None
        self._paused: list[str] = []  # this cycle's updates paused by a transient failure
        self.poll_interval = self.enrollment.poll_interval
        self.telemetry = telemetry_for_agent(config, self.layout, self.client,
                                             self.active_version, clock)

    # -- start-up ------------------------------------------------------------------------------
    def recover(self) -> None:
        """Start-up recovery for every model (the state machine's rules), before anything else."""
        remove_stale_workdirs(self.config.runtime_dir)
        # Plaintext exports of a killed run (validation) too, even if no validation runs now.
        remove_stale_exports(self.config.runtime_dir)
        for model in self.layout.model_names():
            store = self.store(model)
            crashed = store.was_running()
            try:
                action = run_recovery(store, self.slots(model), self.clock(), crashed=crashed)
            except SealedToOtherStateError as exc:
                # The slots cannot be opened in this device state: recovering now would judge
                # intact slots by a key the TPM withholds. Keep everything as it is (no switch)
                # until 'edge-updater reseal'; the next start-up recovers.
                self.last_error = str(exc)
                log.error("recovery postponed", extra={"model": model, "error": str(exc)})
                continue
            st = action.state
            outcome = st.phase in (Phase.COMMITTED, Phase.REJECTED, Phase.ROLLED_BACK)
            if action.save and outcome:
                self._outcome_event(st, reason=action.reason)
            elif crashed and outcome and st.model is not None:
                # The last process may have died between saving this outcome and queueing its
                # event: queue it again (same id, so the server keeps one).
                self._outcome_event(st, reason=st.reason, recovered=True)
            if action.reason != "nothing to do":
                log.warning("recovery", extra={"model": model, "reason": action.reason,
                                               "phase": st.phase.value})
                self._export_active(model)

    # -- check-in ------------------------------------------------------------------------------
    def checkin_report(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        phases: list[str] = []
        for model in self.layout.model_names():
            models[model] = self.slots(model).checkin_view()
            phases.append(self.store(model).load().phase.value)
        busy = [p for p in phases if p not in ("idle", "committed", "rejected", "rolled_back")]
        state = busy[0] if busy else (phases[0] if phases else "idle")
        reports = self.health.read()
        last = reports[-1] if reports else None
        health = {
            "latency_p50_ms": last.latency_p50_ms if last else None,
            "latency_p95_ms": last.latency_p95_ms if last else None,
            "errors": sum(r.errors for r in reports[-50:]),
            "last_metric": last.metric if last else None,
        }
        return {
            "models": models, "state": state, "health": health,
            "free_disk_bytes": shutil.disk_usage(self.layout.root).free,
            "last_error": self.last_error or _app_error(reports),
            "facts": {k: v for k, v in self.facts.items()
                      if isinstance(v, str | int | float | bool | list)},
        }

    def flush_events(self) -> int:
        sent = 0
        while not self.stop.is_set():
            batch = self.events.pending(100)
            if not batch:
                break
            self.client.post_events(batch)
            self.events.ack(e["id"] for e in batch)
            sent += len(batch)
        return sent

    @property
    def tuf_requests_made(self) -> int:
        """Requests the TUF fetcher made in the current cycle (0 when TUF was not touched)."""
        return self._fetcher.requests_made if self._fetcher is not None else 0

    # -- one cycle -----------------------------------------------------------------------------
    def run_cycle(self) -> CycleReport:
        report = CycleReport()
        self._paused.clear()
        self._tuf = None  # one Updater per cycle
        self._fetcher = None
        self.shadowed_this_cycle.clear()
        try:
            with contextlib.suppress(TransportError):
                self.flush_events()
            for model in self.layout.model_names():
                if self.stop.is_set():
                    return report
                with contextlib.suppress(Error, OSError):  # a baseline never blocks an update
                    self.record_baselines(model)
                self._advance(model)
            try:
                answer = self.client.checkin(self.checkin_report())
            except TransportError as exc:
                self.last_error = f"offline: {exc}"
                log.warning("check-in failed; keeping the current model", extra={"error": str(exc)})
                # Said in the report too: without it `check` shows no error and outcomes from
                # an earlier cycle, as if the server had been asked.
                report.errors.append(
                    f"cannot reach the update server: {exc}; the running model is kept and the "
                    "outcomes shown are from the last cycle that reached it")
                return self._finish(report)
            report.online = True
            report.poll_interval = self.poll_interval = answer.poll_interval
            report.assignments = len(answer.assignments)
            for a in answer.assignments:
                if self.stop.is_set():
                    break
                try:
                    self.apply_assignment(a)
                except TransportError as exc:
                    report.errors.append(str(exc))
                    self.last_error = str(exc)
            with contextlib.suppress(TransportError):
                self.flush_events()
            if self.telemetry is not None:  # queued reports go out with the check-in
                with contextlib.suppress(Error, OSError):
                    self.telemetry.flush()
        finally:
            self._tuf = None
        return self._finish(report)

    def _finish(self, report: CycleReport) -> CycleReport:
        # Updates paused by a network failure during this cycle (TUF download, rollout status).
        report.errors.extend(e for e in self._paused if e not in report.errors)
        self._paused.clear()
        for model in self.layout.model_names():
            phase = self.store(model).load().phase
            report.outcomes[model] = phase.value
            report.in_trial = report.in_trial or phase is Phase.TRIAL
        return report

    # -- assignments ---------------------------------------------------------------------------
    def apply_assignment(self, a: Assignment) -> None:
        """Act on one assignment from the server (as ``run_cycle`` does for each one it gets):
        finish an update in progress first, skip what runs or was refused already, else start
        the update and drive it as far as it goes now."""
        layout_dir = self.layout.model_dir(a.model)  # validates the name
        layout_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store, slots = self.store(a.model), self.slots(a.model)
        st = store.load()
        if not st.phase.terminal:
            if (a.key_grants and st.version == a.version and st.target == a.target
                    and dict(a.key_grants) != st.key_grants):
                # e.g. the grant expired before the install: this check-in brought a fresh one
                self._apply(a.model, st, GrantsRenewed(a.key_grants))
            self._advance(a.model)  # finish what is in progress first
            return
        active = slots.active()
        if active is not None and active.version == a.version:
            return  # already running it
        if (st.phase in (Phase.REJECTED, Phase.ROLLED_BACK) and st.model == a.model
                and st.version == a.version):
            return  # already refused this version; the reason was reported
        st = self._apply(a.model, st, Start(
            model=a.model, version=a.version, target=a.target, delta_target=a.delta_target,
            rollout_id=a.rollout_id, allow_downgrade=a.allow_downgrade,
            key_grants=a.key_grants))
        try:
            check_version_str(a.version)
            if active is not None:
                refuse_downgrade(a.version, active.version, a.allow_downgrade)
        except UpdateRefusedError as exc:
            self._reject(a.model, st, str(exc))
            return
        self._advance(a.model)

    # -- the state machine driver --------------------------------------------------------------
    def _advance(self, model: str) -> None:
        """Drive ``model``'s update forward until it is done, waiting (trial), or offline."""
        store = self.store(model)
        for _ in range(_MAX_STEPS):
            if self.stop.is_set():
                return
            st = store.load()
            if st.phase.terminal:
                return
            step = {
                Phase.DOWNLOADING: self._step_download,
                Phase.VERIFYING: self._step_verify,
                Phase.INSTALLING: self._step_install,
                Phase.VALIDATING: self._step_validate,
                Phase.SHADOW: lambda m, s: step_shadow(self, m, s),
                Phase.SWITCHING: self._step_switch,
                Phase.TRIAL: self._step_trial,
            }[st.phase]
            try:
                if not step(model, st):
                    return
            except EdgepkgError as exc:
                action = self._on_failure(model, exc)
                if action is None:
                    raise
                if action not in (Action.FALL_BACK, Action.REJECT):
                    return  # retry or wait: the next cycle resumes from the saved state

    def _on_failure(self, model: str, exc: EdgepkgError) -> Action | None:
        """Apply :func:`~device_updater.outcomes.classify`'s answer for ``exc``; None when the
        exception is not the driver's to handle (the caller re-raises it)."""
        st = self.store(model).load()  # a step may have saved before it failed
        decision = classify(exc, st.phase, delta=st.delta_target is not None)
        if decision.action is Action.RAISE:
            return None
        self.last_error = str(exc)
        if decision.action is Action.WAIT:
            self._paused.append(f"{model}: update paused until the next cycle: {decision.reason}")
            log.warning("update paused until the next cycle",
                        extra={"model": model, "error": decision.reason})
            return decision.action
        if decision.report:
            details: dict[str, Any] = {"reason": str(exc), "phase": st.phase.value}
            if decision.action is Action.FALL_BACK:
                details.update(target=st.delta_target, fallback="full")
            self._event("verification_failed", st, **details)
        event = decision.event()
        assert event is not None
        if isinstance(event, FallBackToFull):
            log.warning("delta unusable, falling back to the full bundle",
                        extra={"model": model, "error": str(exc)})
        new = self._apply(model, st, event)
        self._after_event(model, st, new)
        return decision.action

    # -- operator actions ------------------------------------------------------------------------
    def manual_rollback(self, model: str) -> SlotInfo:
        store, slots = self.store(model), self.slots(model)
        st = store.load()
        active = slots.active_name()
        if active is None:
            raise SlotError(f"no model {model} is installed; nothing to roll back")
        if slots.info(other_slot(active)) is None:
            raise SlotError(f"cannot roll back {model}: slot {other_slot(active)} holds no "
                            "complete previous model")
        if st.phase is Phase.TRIAL:
            self._rollback(model, st, "operator rollback during the trial")
            info = slots.active()
            assert info is not None
            return info
        new = self._apply(model, st, RollBack("operator rollback", active=active, manual=True))
        assert new.expected_active is not None
        info = slots.switch_to(new.expected_active)
        self._export_active(model)
        self._outcome_event(new, reason="operator rollback", to_version=info.version)
        return info

    # -- the loop --------------------------------------------------------------------------------
    def next_delay(self, report: CycleReport, failures: int) -> float:
        base = float(report.poll_interval or self.poll_interval or self.config.poll_interval)
        if report.in_trial:
            base = min(base, max(5.0, self.trial_policy.window_seconds / 10))
        if failures:
            base = min(float(self.config.max_backoff), base * (2 ** min(failures, 16)))
        jitter = self.config.poll_jitter
        return max(1.0, base * (1 + self.rng.uniform(-jitter, jitter)))

    def run(self, *, max_cycles: int | None = None) -> None:
        """The daemon loop: recovery, then cycles until ``stop`` is set (SIGTERM)."""
        self.recover()
        failures = 0
        cycles = 0
        self._start_telemetry()
        while not self.stop.is_set():
            try:
                report = self.run_cycle()
                failures = 0 if report.online else failures + 1
            except Error as exc:  # a bad cycle must never kill the daemon
                log.error("cycle failed", extra={"error": str(exc)})
                self.last_error = str(exc)
                report = CycleReport()
                failures += 1
            cycles += 1
            if max_cycles is not None and cycles >= max_cycles:
                break
            self.stop.wait(self.next_delay(report, failures))
        if self.telemetry is not None:
            self.telemetry.stop()
        self.mark_stopped()

    def _start_telemetry(self) -> None:
        if self.telemetry is None:
            return
        try:
            self.telemetry.start()
        except OSError as exc:  # no telemetry socket must never mean no updates
            log.error("telemetry socket not started", extra={"error": str(exc)})

    def active_version(self, model: str) -> str | None:
        """The version in ``model``'s active slot (None when none is installed)."""
        try:
            info = self.slots(model).active()
        except Error:
            return None
        return info.version if info is not None else None

    def mark_stopped(self) -> None:
        """Record a clean stop, so the next start-up does not treat a trial as a crash."""
        for model in self.layout.model_names():
            self.store(model).mark_stopped()


def _app_error(reports: Sequence[HealthReport]) -> str | None:
    """The last failure the inference app reported (``report-health --fail``), for the
    server's "Last error": the daemon's own errors come first, but without one the operator
    must still see that the app failed and what it said."""
    for r in reversed(reports[-50:]):
        if r.status == "failing":
            what = r.message or (f"{r.errors} failed inferences" if r.errors else "failing")
            model = f"{r.model} {r.version or ''}".strip() if r.model else "the model"
            return f"app reported a failure with {model}: {what}"[:4096]
    return None
