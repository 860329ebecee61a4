"""The I/O of each update phase, for :class:`~device_updater.agent.Agent`.

Every method here does the work one persisted phase names, then moves the state on with a
state-machine event (:func:`~device_updater.state.transition`) and saves it: never a direct
edit of the state. A step returns True to keep going, False to stop for this cycle, or raises;
the driver (``Agent._advance``) turns an exception into an event through the one table in
:mod:`device_updater.outcomes`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from device_updater.checks import check_bundle, delta_matches, is_downgrade, target_summary
from device_updater.config import Config
from device_updater.enrollment import Enrollment
from device_updater.errors import Error, ServerRefusedError, SlotError, UpdateRefusedError
from device_updater.events import EventQueue, make_event
from device_updater.grants import grant_source
from device_updater.http import DeviceAuth, DeviceClient
from device_updater.install import install_delta, install_full
from device_updater.keystore import Keystore, TrustAnchors
from device_updater.layout import Layout, workdir
from device_updater.recovery import holds_abandoned_candidate
from device_updater.sealing import sealer_for
from device_updater.slots import BundleSealer, ModelSummary, SlotInfo, SlotStore, other_slot
from device_updater.state import (
    Committed,
    Downloaded,
    Event,
    FallBackToFull,
    Installed,
    Phase,
    Reject,
    RollBack,
    Switched,
    TrialProgress,
    UpdateState,
    Validated,
    Verified,
    WindowOpened,
    transition,
)
from device_updater.state_store import StateStore
from device_updater.telemetry.reference import record_after_validation
from device_updater.trial import (
    HealthLog,
    HealthReport,
    TrialDecision,
    TrialPolicy,
    TrialState,
    evaluate_trial,
    relevant_report,
)
from device_updater.trial_quality import BaselineStore, apply_quality, summarize
from device_updater.tuf_client import (
    DeviceFetcher,
    TargetNotFoundError,
    TufSession,
    load_anchored_root,
)
from device_updater.validator import Validator
from edgepkg.bundle import BundleInfo, verify_bundle
from edgepkg.keys import public_key_id
from edgepkg.protocol import (
    full_target_name,
    next_window_open,
    parse_maintenance_window,
    window_open,
)

log = logging.getLogger("edge_updater")

_OUTCOME_EVENTS = {Phase.COMMITTED: "committed", Phase.REJECTED: "rejected",
                   Phase.ROLLED_BACK: "rolled_back"}


class UpdateSteps:
    """Collaborators, persistence helpers and the per-phase steps (the agent's base)."""

    config: Config
    keystore: Keystore
    layout: Layout
    enrollment: Enrollment
    session: requests.Session
    clock: Callable[[], float]
    validator: Validator
    facts: dict[str, Any]
    trial_policy: TrialPolicy
    stop: threading.Event
    auth: DeviceAuth
    client: DeviceClient
    events: EventQueue
    health: HealthLog

    def __init__(self) -> None:
        self._sealer: BundleSealer | None = None
        self._tuf: TufSession | None = None
        self._fetcher: DeviceFetcher | None = None
        self._verified: dict[str, tuple[TufSession, Path, tuple[int, int], BundleInfo]] = {}
        # Models that ran a shadow batch this cycle: one batch per model and cycle (the rate
        # bound), although a cycle may drive a model's update more than once.
        self.shadowed_this_cycle: set[str] = set()

    # -- collaborators per model ---------------------------------------------------------------
    def slots(self, model: str) -> SlotStore:
        if self._sealer is None:
            self._sealer = sealer_for(self.keystore, self.keystore.recipient_key())
        return SlotStore(self.layout.model_dir(model) / "slots", sealer=self._sealer,
                         trusted_keys=lambda: self.anchors().public_keys())

    def store(self, model: str) -> StateStore:
        return StateStore(self.layout.model_dir(model) / "state.json")

    def anchors(self) -> TrustAnchors:
        return self.keystore.trust_anchors()

    def tuf(self) -> TufSession:
        """The TUF session of this cycle (refreshed once per cycle, anchored to the token)."""
        if self._tuf is None:
            anchors = self.anchors()
            root = load_anchored_root(self.layout.tuf_dir, anchors.root_sha256)
            self._fetcher = DeviceFetcher(
                auth=self.auth, session=self.session,
                connect_timeout=self.config.connect_timeout,
                read_timeout=self.config.read_timeout,
                resume_dir=self.layout.partial, resume_prefixes=(self.config.targets_url,))
            self._tuf = TufSession(self.layout.metadata_dir, self.config.metadata_url,
                                   self.config.targets_url, bootstrap_root=root,
                                   fetcher=self._fetcher, target_dir=self.layout.downloads)
        return self._tuf

    # -- persistence: every change of state is an event of the state machine --------------------
    def _save(self, model: str, state: UpdateState) -> UpdateState:
        self.store(model).save(state)
        log.info("state", extra={"model": model, "phase": state.phase.value,
                                 "version": state.version, "reason": state.reason})
        return state

    def _apply(self, model: str, st: UpdateState, event: Event) -> UpdateState:
        return self._save(model, transition(st, event, self.clock()))

    def _event(self, type_: str, st: UpdateState, **details: Any) -> None:
        try:
            self.events.append(make_event(type_, now=self.clock(), model=st.model,
                                          version=st.version, rollout_id=st.rollout_id,
                                          details=details))
        except Error as exc:  # an event that cannot be queued must not stop an update
            log.error("cannot queue event %s: %s", type_, exc)

    def _outcome_event(self, st: UpdateState, **details: Any) -> None:
        """Queue the event for the outcome ``st`` (committed / rejected / rolled_back) under an id
        derived from that persisted outcome: if power is cut between saving the outcome and
        queueing its event, start-up queues it again (``recover``) and the server, idempotent
        by id, keeps one."""
        type_ = _OUTCOME_EVENTS[st.phase]
        key = (f"edgepkg-outcome/{self.enrollment.device_id}/{st.model}/{st.version}/"
               f"{st.phase.value}/{st.transitions}/{st.updated_at!r}")
        try:
            self.events.append(make_event(type_, now=self.clock(), model=st.model,
                                          version=st.version, rollout_id=st.rollout_id,
                                          details=details,
                                          event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, key))))
        except Error as exc:
            log.error("cannot queue event %s: %s", type_, exc)

    def _after_event(self, model: str, before: UpdateState, new: UpdateState) -> None:
        """Side effects of an outcome reached by an event: discard the abandoned candidate
        (never the active slot) and report the outcome."""
        if new.phase in (Phase.REJECTED, Phase.ROLLED_BACK) and before.slot is not None:
            self._discard_candidate(model, before)
        if new.phase in _OUTCOME_EVENTS:
            self._outcome_event(new, reason=new.reason, phase=before.phase.value)

    def _discard_candidate(self, model: str, st: UpdateState) -> None:
        """Put the previous good version back in the abandoned candidate's slot (set aside when
        the candidate's write began), else empty the slot if it holds the candidate or an
        interrupted write of it; a slot the candidate never started writing keeps its version."""
        slots = self.slots(model)
        if st.slot is not None and st.slot != slots.active_name():
            try:
                if slots.restore_displaced(st.slot):
                    return
            except (SlotError, OSError) as exc:  # start-up recovery puts it back then
                log.error("cannot put the previous version back", extra={
                    "model": model, "slot": st.slot, "error": str(exc)})
                return
        if (st.slot is not None and st.slot != slots.active_name()
                and holds_abandoned_candidate(slots.view(), st.slot, st.candidate)):
            with contextlib.suppress(SlotError):
                slots.discard(st.slot)

    def _reject(self, model: str, st: UpdateState, reason: str) -> UpdateState:
        new = self._apply(model, st, Reject(reason, active=self.slots(model).active_name()))
        self._after_event(model, st, new)
        log.warning("update rejected", extra={"model": model, "version": st.version,
                                              "reason": reason})
        return new

    def _rollback(self, model: str, st: UpdateState, reason: str) -> None:
        slots = self.slots(model)
        active = slots.active_name()
        assert active is not None
        new = self._apply(model, st, RollBack(reason, active=active))
        if new.expected_active and new.expected_active != active:
            slots.switch_to(new.expected_active)
        self._discard_candidate(model, st)
        self._export_active(model)
        self._outcome_event(new, reason=reason)
        log.warning("rolled back", extra={"model": model, "version": st.version,
                                          "reason": reason})

    # DOWNLOADING ------------------------------------------------------------------------------
    def _delta_usable(self, tuf: TufSession, model: str, st: UpdateState) -> bool:
        active = self.slots(model).active()
        if st.delta_target is None or active is None:
            return False
        try:
            info = tuf.target_info(st.delta_target)
        except TargetNotFoundError:
            return False
        return delta_matches(info.custom, st, active)

    def _step_download(self, model: str, st: UpdateState) -> bool:
        tuf = self.tuf()
        assert st.target is not None
        try:
            candidate = target_summary(tuf.target_info(st.target).custom, st)
        except TargetNotFoundError as exc:
            self._reject(model, st, str(exc))
            return False
        # The running model's plaintext is checked when the delta is applied (export verifies
        # its SHA-256); a damaged one makes the install fall back to the full bundle.
        if st.delta_target is not None and not self._delta_usable(tuf, model, st):
            st = self._apply(model, st, FallBackToFull(
                "the signed metadata offers no delta from the running model"))
        name = st.delta_target or st.target
        assert name is not None
        self._event("download_started", st, target=name,
                    kind="full" if st.delta_target is None else "delta")
        path = tuf.fetch(tuf.target_info(name))  # a failed delta falls back (outcomes table)
        self._event("download_finished", st, target=name, bytes=path.stat().st_size)
        self._apply(model, st, Downloaded(candidate))
        return True

    # VERIFYING --------------------------------------------------------------------------------
    def _fetch_verified(self, name: str) -> tuple[Path, BundleInfo]:
        """The TUF-verified local target ``name`` and its checked bundle signature.

        Within one cycle (one TUF session) a file already verified by the VERIFYING step is not
        hashed again by INSTALLING unless it changed (size/mtime); after a restart it is.
        Decryption re-checks the signature and authenticates every chunk in any case.
        """
        tuf = self.tuf()
        hit = self._verified.get(name)
        if hit is not None and hit[0] is tuf:
            _, path, stamp, info = hit
            with contextlib.suppress(OSError):
                st = path.stat()
                if (st.st_size, st.st_mtime_ns) == stamp:
                    return path, info
        path = tuf.fetch(tuf.target_info(name))
        info = verify_bundle(path, self.anchors().public_keys())
        st = path.stat()
        self._verified[name] = (tuf, path, (st.st_size, st.st_mtime_ns), info)
        return path, info

    def _verified_bundle(self, model: str, st: UpdateState) -> tuple[Path, ModelSummary]:
        """Fetch (cached or resumed, TUF-verified) and verify the bundle in use (the delta while
        ``st.delta_target`` is set); raise on any refusal."""
        name = st.delta_target or st.target
        assert name is not None
        path, info = self._fetch_verified(name)
        active = self.slots(model).active()
        summary = check_bundle(
            info, st, active, delta=st.delta_target is not None, facts=self.facts,
            my_key_id=public_key_id(self.keystore.recipient_key().public_key()),
            granted=name in st.key_grants)
        if active is not None:
            self.check_signed_downgrade(model, info.manifest.version, active)
        return path, summary

    def check_signed_downgrade(self, model: str, new: str, active: SlotInfo) -> None:
        """A lower version needs more than the server's word (its reply is not signed): it must
        be the version still kept in the other slot (an operator rollback to the previous
        release), or the running version must be gone from the signed TUF targets (revoked)."""
        if not is_downgrade(new, active.version):
            return
        previous = self.slots(model).info(other_slot(active.name))
        if previous is not None and previous.version == new:
            return
        try:
            self.tuf().target_info(full_target_name(model, active.version))
        except TargetNotFoundError:
            return  # the running release was withdrawn in signed metadata
        raise UpdateRefusedError(
            f"downgrade from {active.version} to {new} refused: {new} is not the previous "
            f"version kept on this device and {active.version} is still a signed release")

    def _step_verify(self, model: str, st: UpdateState) -> bool:
        _, summary = self._verified_bundle(model, st)
        self._apply(model, st, Verified(summary, self.slots(model).inactive_name()))
        return True

    # INSTALLING -------------------------------------------------------------------------------
    def _step_install(self, model: str, st: UpdateState) -> bool:
        assert st.slot is not None and st.candidate is not None
        slots = self.slots(model)
        keys = [self.keystore.recipient_key()]
        trusted = self.anchors().public_keys()
        path, _ = self._verified_bundle(model, st)
        name = st.delta_target or st.target
        assert name is not None
        # Not a direct recipient: the key grant sent with the assignment opens the data key.
        source = grant_source(st.key_grants, name, self._fetch_verified(name)[1], keys[0],
                              self.clock())
        if st.delta_target is not None:
            with workdir(self.config.runtime_dir) as work:
                install_delta(slots, st.slot, st.candidate, path, keys=keys, trusted=trusted,
                              workdir=work, runtime_dir=self.config.runtime_dir,
                              data_key_source=source)
        else:
            install_full(slots, st.slot, st.candidate, path, keys=keys, trusted=trusted,
                         data_key_source=source)
        new_state = self._apply(model, st, Installed())
        self._event("installed", new_state, slot=st.slot,
                    method="delta" if st.delta_target else "full")
        self._cleanup_downloads(st)
        return True

    def _cleanup_downloads(self, st: UpdateState) -> None:
        tuf = self._tuf
        if tuf is None:
            return
        for name in (st.target, st.delta_target):
            if name:
                with contextlib.suppress(Exception):
                    tuf.local_path(tuf.target_info(name)).unlink(missing_ok=True)

    # VALIDATING -------------------------------------------------------------------------------
    def _step_validate(self, model: str, st: UpdateState) -> bool:
        assert st.slot is not None and st.candidate is not None
        slots = self.slots(model)
        outcome = self.validator(slots, st.slot, st.candidate, slots.active())
        self._event("validation_result", st, accepted=outcome.accepted,
                    reasons=outcome.reasons, **outcome.details)
        if not outcome.accepted:
            self._reject(model, st, "holdout validation failed: " + "; ".join(outcome.reasons))
            return False
        self._apply(model, st, Validated("; ".join(outcome.reasons) or None,
                                         shadow=self._wants_shadow(st)))
        assert st.version is not None
        record_after_validation(self.config.holdout_dir, self.layout.model_dir(model), model,
                                st.version, st.candidate.policy)  # for field drift
        return True

    @staticmethod
    def _wants_shadow(st: UpdateState) -> bool:
        """The signed policy asks for a shadow run (SHADOW phase) before the switch."""
        from edgepkg.policy import PolicySchemaError, parse_policy

        try:
            return parse_policy(st.candidate.policy if st.candidate else None).shadow is not None
        except PolicySchemaError:
            return False  # the gate has already judged a malformed policy

    # WAITING (validated; the maintenance window decides when to switch) ----------------------
    def _step_wait(self, model: str, st: UpdateState) -> bool:
        assert st.maintenance_window is not None
        window = parse_maintenance_window(st.maintenance_window)
        now = self.clock()
        if not window_open(window, now):
            opens = next_window_open(window, now)
            log.info("validated; waiting for the maintenance window",
                     extra={"model": model, "version": st.version,
                            "window": st.maintenance_window, "opens_at": opens})
            return False
        self._apply(model, st, WindowOpened())
        return True

    # SWITCHING --------------------------------------------------------------------------------
    def _step_switch(self, model: str, st: UpdateState) -> bool:
        assert st.slot is not None
        self.slots(model).switch_to(st.slot)
        new = self._apply(model, st, Switched())
        self._export_active(model)
        self._event("trial_started", new, slot=st.slot)
        return True

    def _export_active(self, model: str) -> None:
        # Exported in a private ``.work-<pid>-export`` dir, then renamed into place: a process
        # killed mid-export leaves no plaintext temp file beside the app's model, only a dir
        # that the next start-up removes (layout.remove_stale_workdirs).
        runtime = self.config.runtime_dir
        scratch = runtime / f".work-{os.getpid()}-export"
        with contextlib.suppress(Error, OSError):
            runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                tmp = self.slots(model).export_plaintext(None, scratch)
                os.replace(tmp, runtime / tmp.name)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

    # TRIAL ------------------------------------------------------------------------------------
    def _step_trial(self, model: str, st: UpdateState) -> bool:
        assert st.model is not None and st.version is not None
        now = self.clock()
        started = st.trial_started_at if st.trial_started_at is not None else now
        trial = TrialState(st.model, st.version, started,
                           st.candidate.sha256 if st.candidate else None)
        reports = self.health.read(since=started)
        decision = evaluate_trial(trial, reports, now, self.trial_policy)
        decision = self._trial_quality(model, st, trial, reports, decision, now - started)
        if decision.inferences != st.trial_inferences:
            st = self._apply(model, st, TrialProgress(decision.inferences))
        if decision.action == "wait":
            return False
        if decision.action == "commit" and st.rollout_id:
            try:
                status = self.client.rollout_status(st.rollout_id)
            except ServerRefusedError as exc:
                status = "unknown"
                log.warning("rollout status refused", extra={"error": str(exc)})
            if status == "aborted":
                self._rollback(model, st, "the rollout was aborted on the server during the trial")
                return False
        if decision.action == "rollback":
            self._rollback(model, st, decision.reason)
            return False
        new = self._apply(model, st, Committed(decision.reason))
        if st.slot is not None:
            # The other slot now holds the version this one replaced: the one set aside when
            # the candidate's write began is a third copy (start-up recovery retries a failure).
            try:
                self.slots(model).drop_displaced(st.slot)
            except (SlotError, OSError) as exc:
                log.warning("cannot delete the set-aside version", extra={
                    "model": model, "slot": st.slot, "error": str(exc)})
        self._outcome_event(new, reason=decision.reason, inferences=decision.inferences)
        return False

    # Trial quality: the previous model's baseline on this device (docs/validation.md) ---------
    def baselines(self, model: str) -> BaselineStore:
        return BaselineStore(self.layout.model_dir(model) / "quality-baseline.json")

    def record_baselines(self, model: str) -> None:
        """Fold the app's health reports into the rolling baseline of each version kept."""
        slots = self.slots(model)
        reports = self.health.read()
        for name in ("a", "b"):
            info = slots.info(name)
            if info is not None:
                self.baselines(model).record(model, info.version, reports)

    def _trial_quality(self, model: str, st: UpdateState, trial: TrialState,
                       reports: list[HealthReport], decision: TrialDecision,
                       elapsed: float) -> TrialDecision:
        from edgepkg.policy import PolicySchemaError, parse_policy

        try:
            rule = parse_policy(st.candidate.policy if st.candidate else None).trial
        except PolicySchemaError:
            rule = None
        if rule is None or st.slot is None:
            return decision
        self.record_baselines(model)
        previous = self.slots(model).info(other_slot(st.slot))
        baseline = self.baselines(model).summary(previous.version) if previous else None
        mine = summarize([r for r in reports if relevant_report(trial, r)])
        return apply_quality(decision, rule, baseline, mine,
                             past_deadline=elapsed >= self.trial_policy.deadline)
