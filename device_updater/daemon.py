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

Each state is saved (H6's :class:`~device_updater.state.StateStore`, atomic) *before* the action
it names; start-up runs :func:`~device_updater.state.run_recovery` for every model. Network
failures never touch the running model: the cycle ends and the loop backs off. Expired TUF
metadata blocks new installs only.

All collaborators are passed in: keystore, HTTP session, validator, clock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import requests

from device_updater.config import Config
from device_updater.errors import (
    EnrollmentError,
    Error,
    SealError,
    ServerRefusedError,
    SlotError,
    TransportError,
    UntrustedDeviceInputError,
    UpdateRefusedError,
)
from device_updater.events import EventQueue, make_event
from device_updater.facts import device_facts, unmet_requirements
from device_updater.http import Assignment, DeviceAuth, DeviceClient, enroll
from device_updater.keystore import Keystore, TrustAnchors, device_id, device_public_key_pem
from device_updater.slots import (
    BundleSealer,
    ModelSummary,
    ReleaseEvidence,
    SlotInfo,
    SlotStore,
    export_path,
    other_slot,
)
from device_updater.state import (
    Committed,
    Downloaded,
    Installed,
    Phase,
    Reject,
    Retry,
    RollBack,
    Start,
    StateStore,
    Switched,
    TrialProgress,
    UpdateState,
    Validated,
    Verified,
    run_recovery,
    transition,
)
from device_updater.trial import HealthLog, TrialPolicy, TrialState, evaluate_trial
from device_updater.tuf_client import (
    DeviceFetcher,
    MetadataExpiredError,
    TargetNotFoundError,
    TufSession,
    TufTransportError,
    TufVerificationError,
    check_root_bytes,
    install_trusted_root,
    load_anchored_root,
)
from edgepkg._atomic import atomic_write_bytes
from edgepkg.bundle import BundleInfo, BundleReader, parse_version, verify_bundle
from edgepkg.errors import (
    BundleError,
    DeltaError,
    NotARecipientError,
    TooLargeError,
    UntrustedInputError,
)
from edgepkg.errors import Error as EdgepkgError
from edgepkg.keys import public_key_id

log = logging.getLogger("edge_updater")

_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


# --- layout ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where everything lives under the state directory."""

    root: Path

    @property
    def tuf_dir(self) -> Path:
        return self.root / "tuf"

    @property
    def metadata_dir(self) -> Path:
        return self.root / "tuf" / "metadata"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def partial(self) -> Path:
        return self.root / "downloads" / ".partial"

    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def health(self) -> Path:
        return self.root / "health.json"

    @property
    def enrollment(self) -> Path:
        return self.root / "enrollment.json"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_dir(self, name: str) -> Path:
        if not _MODEL_NAME.match(name):
            raise UntrustedDeviceInputError(f"bad model name {name!r}")
        return self.models / name

    def model_names(self) -> list[str]:
        if not self.models.is_dir():
            return []
        return sorted(p.name for p in self.models.iterdir()
                      if p.is_dir() and _MODEL_NAME.match(p.name))


# --- enrollment --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    server_url: str
    poll_interval: int


def read_enrollment(layout: Layout) -> Enrollment:
    try:
        doc = json.loads(layout.enrollment.read_bytes()[:65536])
        return Enrollment(str(doc["device_id"]), str(doc["server_url"]), int(doc["poll_interval"]))
    except FileNotFoundError:
        raise EnrollmentError(
            f"this device is not enrolled ({layout.enrollment} missing): run "
            "'edge-updater enroll' first") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise EnrollmentError(f"{layout.enrollment} is damaged ({exc}); enroll again") from None


def enroll_device(
    config: Config,
    keystore: Keystore,
    *,
    enrollment_token: str,
    trusted_root: bytes,
    release_keys: list[bytes],
    session: requests.Session | None = None,
    facts: dict[str, Any] | None = None,
) -> Enrollment:
    """Create the device key in the keystore, provision the trust anchors, register with the server.

    The trusted root and release keys come from provisioning media (never from the server):
    their SHA-256 / public keys become the token-held anchors every later cycle checks.
    """
    layout = Layout(config.state_dir)
    if layout.enrollment.exists():
        raise EnrollmentError(
            f"this device is already enrolled ({layout.enrollment}); its trust anchors are not "
            "replaced. To re-enroll, wipe the state directory and the token first.")
    layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_root_bytes(trusted_root)
    keystore.ensure_device_key()
    anchor = install_trusted_root(layout.tuf_dir, trusted_root)
    keystore.provision(TrustAnchors(anchor, list(release_keys)))
    result = enroll(
        config.server_url, enrollment_token, device_public_key_pem(keystore),
        facts if facts is not None else device_facts(config.facts), list(config.tags),
        session=session, timeout=(config.connect_timeout, config.read_timeout),
    )
    mine = device_id(keystore)
    if result.device_id != mine:
        raise EnrollmentError(
            f"the server registered device id {result.device_id}, but this device's key id is "
            f"{mine}: refusing a server that does not derive ids from the device key")
    enr = Enrollment(mine, config.server_url, result.poll_interval)
    atomic_write_bytes(layout.enrollment, json.dumps(enr.__dict__, indent=1).encode(), 0o600)
    return enr


# --- validation collaborator -------------------------------------------------------------------


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
    """H6's validation: candidate and current model measured on the holdout set in a child
    process each (time-limited), the current one cached per version; the signed policy decides.

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
        from device_updater import validation as v
        from device_updater.errors import ValidationError

        try:
            policy = v.Policy.from_mapping(candidate.policy)
            holdout = v.load_holdout(self.holdout_path)
            runner = v.runner_for(candidate.format, external=self.external)
            with slots.exported(candidate_slot, self.runtime_dir) as path:
                cand = v.measure(path, candidate.format, holdout, timeout=self.timeout,
                                 runner=runner, metric=policy.metric, version=candidate.version,
                                 sha256=candidate.sha256)
            cur = None
            if current is not None:
                def produce() -> v.ValidationResult:
                    assert current is not None
                    with slots.exported(current.name, self.runtime_dir) as cpath:
                        return v.measure(cpath, current.format, holdout, timeout=self.timeout,
                                         runner=v.runner_for(current.format,
                                                             external=self.external),
                                         metric=policy.metric)
                try:
                    cur = v.ResultCache(self.cache_path).get_or_measure(
                        current.version, current.sha256, holdout, produce, metric=policy.metric)
                except ValidationError as exc:
                    log.warning("current model could not be measured", extra={"error": str(exc)})
            decision = v.evaluate_policy(cand, cur, policy)
        except ValidationError as exc:
            return ValidationOutcome(False, [str(exc)])
        return ValidationOutcome(decision.accepted, list(decision.reasons),
                                 {"values": decision.values})


def make_validator(config: Config) -> Validator:
    if config.holdout_dir is None:
        return accept_all_validator
    external = ({fmt: list(config.external_command)
                 for fmt in ("onnx", "tflite", "tflm", "edgetpu", "tensorrt", "raw")}
                if config.external_command else None)
    return HoldoutValidator(config.holdout_dir, runtime_dir=config.runtime_dir,
                            cache_path=config.state_dir / "validation-cache.json",
                            timeout=config.validation_timeout_s, external=external)


# --- installing into a slot (shared by the agent and bench/device_install.py) -------------------


def install_full(slots: SlotStore, slot: str, candidate: ModelSummary, bundle: Path, *,
                 keys: list[Any], trusted: list[Any]) -> SlotInfo:
    """Decrypt a verified full bundle straight into ``slot``: one pass (decrypt, zstd, SHA-256
    and at-rest sealing as chunks stream), checked against the signed ``candidate`` on commit."""
    reader = BundleReader(bundle, keys=keys, trusted_keys=trusted)
    return slots.write(candidate, reader.chunks(), slot=slot, release=_evidence(reader.info))


def _evidence(info: BundleInfo) -> ReleaseEvidence:
    """What the slot keeps to re-verify, at every later read, that a release key signed it."""
    return ReleaseEvidence(info.manifest_bytes, info.signature_block)


def install_delta(slots: SlotStore, slot: str, candidate: ModelSummary, bundle: Path, *,
                  keys: list[Any], trusted: list[Any], workdir: Path,
                  runtime_dir: Path | None = None) -> SlotInfo:
    """Rebuild ``candidate`` from the active model and a verified delta bundle into ``slot``.

    The (small) patch is decrypted into ``workdir`` (tmpfs). The base is the active model's
    plaintext export in ``runtime_dir`` when one is there (it is only used if its SHA-256 equals
    the active slot's signed value, checked by the delta engine), else the active slot is
    decrypted into ``workdir``. The rebuilt plaintext streams straight into the slot writer
    (hash + seal in the same pass, no temporary plaintext); the slot is committed only if
    length and SHA-256 match the signed ``candidate``.
    Raises ``_Fallback``/DeltaError/SlotError: the caller installs the full bundle instead.
    """
    from edgepkg.delta import DeltaBaseError, apply_delta_to, read_delta_header

    active = slots.active()
    if active is None:
        raise _Fallback("no active model to apply a delta to")
    patch = workdir / "patch"
    reader = BundleReader(bundle, keys=keys, trusted_keys=trusted)
    with open(patch, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.writelines(reader.chunks())
    header = read_delta_header(patch)
    if header.old_sha256 != active.sha256 or header.old_length != active.summary.length:
        raise _Fallback("the delta is not based on the running model")
    bases: list[Path | None] = []
    if runtime_dir is not None:
        exported = export_path(active, runtime_dir)
        with contextlib.suppress(OSError):
            if exported.stat().st_size == active.summary.length:
                bases.append(exported)
    bases.append(None)  # last resort: decrypt the active slot
    for i, base in enumerate(bases):
        if base is None:
            base = slots.export_plaintext(active.name, workdir / "old")
        with open(patch, "rb") as delta, slots.begin_write(
                candidate, slot=slot, release=_evidence(reader.info)) as writer:
            try:
                apply_delta_to(base, delta, writer, expected_sha256=candidate.sha256,
                               expected_length=candidate.length, spool_dir=workdir)
            except DeltaBaseError:
                if i == len(bases) - 1:
                    raise
                log.info("runtime export is not the active model; decrypting the slot instead")
                continue
            return writer.commit()
    raise AssertionError("unreachable")


# --- the agent ---------------------------------------------------------------------------------


@dataclass
class CycleReport:
    online: bool = False
    assignments: int = 0
    poll_interval: int | None = None
    in_trial: bool = False
    errors: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)  # model -> phase at cycle end


class _Fallback(Exception):
    """Internal: the delta path failed; install the full bundle instead."""


class Agent:
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
        self.config = config
        self.keystore = keystore
        self.layout = Layout(config.state_dir)
        self.layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.enrollment = read_enrollment(self.layout)
        self.session = session or requests.Session()
        self.clock = clock
        self.validator: Validator = validator or make_validator(config)
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
        self._sealer: BundleSealer | None = None
        self._tuf: TufSession | None = None
        self._fetcher: DeviceFetcher | None = None
        self._verified: dict[str, tuple[TufSession, Path, tuple[int, int], BundleInfo]] = {}
        self.last_error: str | None = None
        self.poll_interval = self.enrollment.poll_interval

    # -- collaborators per model ---------------------------------------------------------------
    def slots(self, model: str) -> SlotStore:
        if self._sealer is None:
            self._sealer = BundleSealer(self.keystore.recipient_key())
        return SlotStore(self.layout.model_dir(model) / "slots", sealer=self._sealer,
                         trusted_keys=lambda: self.anchors().public_keys())

    def store(self, model: str) -> StateStore:
        return StateStore(self.layout.model_dir(model) / "state.json")

    def _save(self, model: str, state: UpdateState) -> UpdateState:
        self.store(model).save(state)
        log.info("state", extra={"model": model, "phase": state.phase.value,
                                 "version": state.version, "reason": state.reason})
        return state

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
        queueing its event, start-up queues it again (:meth:`recover`) and the server, idempotent
        by id, keeps one."""
        type_ = {Phase.COMMITTED: "committed", Phase.REJECTED: "rejected",
                 Phase.ROLLED_BACK: "rolled_back"}[st.phase]
        key = (f"edgepkg-outcome/{self.enrollment.device_id}/{st.model}/{st.version}/"
               f"{st.phase.value}/{st.transitions}/{st.updated_at!r}")
        try:
            self.events.append(make_event(type_, now=self.clock(), model=st.model,
                                          version=st.version, rollout_id=st.rollout_id,
                                          details=details,
                                          event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, key))))
        except Error as exc:
            log.error("cannot queue event %s: %s", type_, exc)

    # -- TUF (one Updater per cycle) -----------------------------------------------------------
    def anchors(self) -> TrustAnchors:
        return self.keystore.trust_anchors()

    def tuf(self) -> TufSession:
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

    # -- start-up ------------------------------------------------------------------------------
    def recover(self) -> None:
        """Start-up recovery for every model (H6's rules), before anything else."""
        _remove_stale_workdirs(self.config.runtime_dir)
        for model in self.layout.model_names():
            store = self.store(model)
            crashed = store.was_running()
            action = run_recovery(store, self.slots(model), self.clock(), crashed=crashed)
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
            "last_error": self.last_error,
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

    # -- one cycle -----------------------------------------------------------------------------
    def run_cycle(self) -> CycleReport:
        report = CycleReport()
        self._tuf = None  # one Updater per cycle
        try:
            with contextlib.suppress(TransportError):
                self.flush_events()
            for model in self.layout.model_names():
                if self.stop.is_set():
                    return report
                self._advance(model)
            try:
                answer = self.client.checkin(self.checkin_report())
            except TransportError as exc:
                self.last_error = f"offline: {exc}"
                log.warning("check-in failed; keeping the current model", extra={"error": str(exc)})
                return self._finish(report)
            report.online = True
            report.poll_interval = self.poll_interval = answer.poll_interval
            report.assignments = len(answer.assignments)
            for a in answer.assignments:
                if self.stop.is_set():
                    break
                try:
                    self._handle_assignment(a)
                except TransportError as exc:
                    report.errors.append(str(exc))
                    self.last_error = str(exc)
            with contextlib.suppress(TransportError):
                self.flush_events()
        finally:
            self._tuf = None
        return self._finish(report)

    def _finish(self, report: CycleReport) -> CycleReport:
        for model in self.layout.model_names():
            phase = self.store(model).load().phase
            report.outcomes[model] = phase.value
            report.in_trial = report.in_trial or phase is Phase.TRIAL
        return report

    # -- assignments ---------------------------------------------------------------------------
    def _handle_assignment(self, a: Assignment) -> None:
        layout_dir = self.layout.model_dir(a.model)  # validates the name
        layout_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store, slots = self.store(a.model), self.slots(a.model)
        st = store.load()
        if not st.phase.terminal:
            self._advance(a.model)  # finish what is in progress first
            return
        active = slots.active()
        if active is not None and active.version == a.version:
            return  # already running it
        if (st.phase in (Phase.REJECTED, Phase.ROLLED_BACK) and st.model == a.model
                and st.version == a.version):
            return  # already refused this version; the reason was reported
        st = self._save(a.model, transition(st, Start(
            model=a.model, version=a.version, target=a.target, delta_target=a.delta_target,
            rollout_id=a.rollout_id, allow_downgrade=a.allow_downgrade), self.clock()))
        try:
            _check_version_str(a.version)
            if active is not None:
                self._refuse_downgrade(a.version, active.version, a.allow_downgrade)
        except UpdateRefusedError as exc:
            self._reject(a.model, st, str(exc))
            return
        self._advance(a.model)

    @staticmethod
    def _refuse_downgrade(new: str, running: str, allowed: bool) -> None:
        try:
            lower = parse_version(new) < parse_version(running)
        except EdgepkgError as exc:
            raise UpdateRefusedError(f"bad version: {exc}") from exc
        if lower and not allowed:
            raise UpdateRefusedError(
                f"downgrade from {running} to {new} refused: the assignment does not allow it")

    def _check_signed_downgrade(self, model: str, new: str, active: SlotInfo) -> None:
        """A lower version needs more than the server's word (its reply is not signed): it must
        be the version still kept in the other slot (an operator rollback to the previous
        release), or the running version must be gone from the signed TUF targets (revoked)."""
        if parse_version(new) >= parse_version(active.version):
            return
        previous = self.slots(model).info(other_slot(active.name))
        if previous is not None and previous.version == new:
            return
        running = f"models/{model}/{active.version}/{model}-{active.version}.edgepkg"
        try:
            self.tuf().target_info(running)
        except TargetNotFoundError:
            return  # the running release was withdrawn in signed metadata
        raise UpdateRefusedError(
            f"downgrade from {active.version} to {new} refused: {new} is not the previous "
            f"version kept on this device and {active.version} is still a signed release")

    def _reject(self, model: str, st: UpdateState, reason: str) -> UpdateState:
        slots = self.slots(model)
        new = self._save(model, transition(st, Reject(reason, active=slots.active_name()),
                                           self.clock()))
        if st.slot is not None and st.slot != slots.active_name():
            with contextlib.suppress(SlotError):
                slots.discard(st.slot)
        self._outcome_event(new, reason=reason, phase=st.phase.value)
        log.warning("update rejected", extra={"model": model, "version": st.version,
                                              "reason": reason})
        return new

    # -- the state machine driver --------------------------------------------------------------
    def _advance(self, model: str) -> None:
        """Drive ``model``'s update forward until it is done, waiting (trial), or offline."""
        store = self.store(model)
        for _ in range(32):  # bounded: each step saves a new phase or returns
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
                Phase.SWITCHING: self._step_switch,
                Phase.TRIAL: self._step_trial,
            }[st.phase]
            try:
                if not step(model, st):
                    return
            except (TransportError, TufTransportError) as exc:
                self.last_error = str(exc)
                log.warning("network problem; will resume", extra={"model": model,
                                                                   "error": str(exc)})
                return
            except TufVerificationError as exc:
                if isinstance(exc, MetadataExpiredError):
                    self.last_error = str(exc)
                    log.error("signed metadata expired: no new install", extra={"error": str(exc)})
                    if st.phase.before_switch:
                        self._reject(model, st, str(exc))
                    return
                if not st.phase.before_switch:
                    raise
                # a tampered/truncated download or bad metadata: retry later (capped)
                self._event("verification_failed", st, reason=str(exc), phase=st.phase.value)
                new = self._save(model, transition(st, Retry(str(exc)), self.clock()))
                if new.phase is Phase.REJECTED:
                    self._outcome_event(new, reason=new.reason)
                return
            except MetadataExpiredError as exc:
                self.last_error = str(exc)
                log.error("signed metadata expired: no new install", extra={"error": str(exc)})
                if st.phase.before_switch:
                    self._reject(model, st, str(exc))
                return
            except (UntrustedDeviceInputError, UntrustedInputError) as exc:
                st = store.load()
                if st.phase.before_switch:
                    self._event("verification_failed", st, reason=str(exc), phase=st.phase.value)
                    self._reject(model, st, str(exc))
                    continue
                raise

    # DOWNLOADING ------------------------------------------------------------------------------
    def _target_summary(self, tuf: TufSession, st: UpdateState) -> ModelSummary:
        assert st.target is not None and st.model is not None and st.version is not None
        info = tuf.target_info(st.target)
        custom = (info.custom or {}).get("edgepkg")
        if not isinstance(custom, dict) or custom.get("kind") != "full":
            raise UpdateRefusedError(f"target {st.target} is not a full model release")
        summary = ModelSummary.from_mapping(custom)
        if summary.name != st.model or summary.version != st.version:
            raise UpdateRefusedError(
                f"target {st.target} is {summary.name} {summary.version} per the signed metadata, "
                f"not the assigned {st.model} {st.version}")
        return summary

    def _delta_usable(self, tuf: TufSession, model: str, st: UpdateState) -> bool:
        if st.delta_target is None:
            return False
        active = self.slots(model).active()
        if active is None:
            return False
        try:
            info = tuf.target_info(st.delta_target)
        except TargetNotFoundError:
            return False
        custom = (info.custom or {}).get("edgepkg") or {}
        base = custom.get("delta") or {}
        return (custom.get("kind") == "delta" and custom.get("version") == st.version
                and base.get("base_sha256") == active.sha256)

    def _step_download(self, model: str, st: UpdateState) -> bool:
        tuf = self.tuf()
        try:
            candidate = self._target_summary(tuf, st)
        except TargetNotFoundError as exc:
            self._reject(model, st, str(exc))
            return False
        # The running model's plaintext is checked when the delta is applied (export verifies
        # its SHA-256); a damaged one makes the install fall back to the full bundle.
        use_delta = self._delta_usable(tuf, model, st)
        if not use_delta and st.delta_target is not None:
            st = self._save(model, replace(st, delta_target=None))
        name = st.delta_target or st.target
        assert name is not None
        self._event("download_started", st, target=name, kind="delta" if use_delta else "full")
        try:
            path = tuf.fetch(tuf.target_info(name))
        except TufVerificationError as exc:
            if not use_delta:
                raise
            log.warning("delta download failed, falling back to full", extra={"error": str(exc)})
            st = self._save(model, replace(st, delta_target=None))
            name = st.target or ""
            path = tuf.fetch(tuf.target_info(name))
        self._event("download_finished", st, target=name, bytes=path.stat().st_size)
        self._save(model, transition(st, Downloaded(candidate), self.clock()))
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

    def _verified_bundle(self, model: str, st: UpdateState, *, delta: bool
                         ) -> tuple[Path, BundleInfo, ModelSummary]:
        """Fetch (cached or resumed, TUF-verified) and verify the bundle; raise on any refusal."""
        name = st.delta_target if delta else st.target
        assert name is not None
        path, info = self._fetch_verified(name)
        m = info.manifest
        if m.name != st.model or m.version != st.version:
            raise UpdateRefusedError(
                f"bundle is {m.name} {m.version}, assigned was {st.model} {st.version}")
        summary = ModelSummary.from_mapping(m.summary())
        if st.candidate is not None and (summary.sha256 != st.candidate.sha256
                                         or summary.length != st.candidate.length):
            raise UpdateRefusedError("bundle model hash differs from the signed TUF metadata")
        active = self.slots(model).active()
        if delta:
            if not m.delta or active is None or m.delta.get("base_sha256") != active.sha256:
                raise _Fallback("delta is not based on the running model")
        elif m.delta:
            raise UpdateRefusedError("the full release target holds a delta bundle")
        if active is not None:
            self._refuse_downgrade(m.version, active.version, st.allow_downgrade)
            self._check_signed_downgrade(model, m.version, active)
        unmet = unmet_requirements(m.requirements, self.facts)
        if unmet:
            raise UpdateRefusedError("requirements not met: " + "; ".join(unmet))
        my_id = public_key_id(self.keystore.recipient_key().public_key())
        if info.recipient_key_ids and my_id not in info.recipient_key_ids:
            raise NotARecipientError(
                f"bundle is not encrypted for this device (key id {my_id[:16]}...)")
        return path, info, summary

    def _step_verify(self, model: str, st: UpdateState) -> bool:
        try:
            _, _, summary = self._verified_bundle(model, st, delta=st.delta_target is not None)
        except (_Fallback, BundleError, DeltaError, TufVerificationError) as exc:
            if st.delta_target is None or isinstance(exc, NotARecipientError):
                raise UpdateRefusedError(str(exc)) from exc
            log.warning("delta refused, falling back to full", extra={"error": str(exc)})
            self._event("verification_failed", st, target=st.delta_target, reason=str(exc),
                        fallback="full")
            self._save(model, replace(st, delta_target=None))
            return True
        slots = self.slots(model)
        self._save(model, transition(st, Verified(summary, slots.inactive_name()), self.clock()))
        return True

    # INSTALLING -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _workdir(self) -> Iterator[Path]:
        """Scratch space for plaintext (the runtime dir: meant to be a tmpfs), removed after."""
        base = self.config.runtime_dir
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        work = base / f".work-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _step_install(self, model: str, st: UpdateState) -> bool:
        assert st.slot is not None and st.candidate is not None
        slots = self.slots(model)
        keys = [self.keystore.recipient_key()]
        trusted = self.anchors().public_keys()
        if st.delta_target is not None:
            try:
                path, _, _ = self._verified_bundle(model, st, delta=True)
                with self._workdir() as work:
                    install_delta(slots, st.slot, st.candidate, path, keys=keys,
                                  trusted=trusted, workdir=work,
                                  runtime_dir=self.config.runtime_dir)
            except (_Fallback, BundleError, DeltaError, TooLargeError, TufVerificationError,
                    SlotError) as exc:
                if isinstance(exc, NotARecipientError):
                    raise
                log.warning("delta install failed, falling back to full",
                            extra={"error": str(exc)})
                self._event("verification_failed", st, target=st.delta_target,
                            reason=str(exc), fallback="full")
                self._save(model, replace(st, delta_target=None))
                return True
        else:
            path, _, _ = self._verified_bundle(model, st, delta=False)
            install_full(slots, st.slot, st.candidate, path, keys=keys, trusted=trusted)
        new_state = self._save(model, transition(st, Installed(), self.clock()))
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
        self._save(model, transition(st, Validated("; ".join(outcome.reasons) or None),
                                     self.clock()))
        return True

    # SWITCHING --------------------------------------------------------------------------------
    def _step_switch(self, model: str, st: UpdateState) -> bool:
        assert st.slot is not None
        slots = self.slots(model)
        slots.switch_to(st.slot)
        new = self._save(model, transition(st, Switched(), self.clock()))
        self._export_active(model)
        self._event("trial_started", new, slot=st.slot)
        return True

    def _export_active(self, model: str) -> None:
        # Exported in a private ``.work-<pid>-export`` dir, then renamed into place: a process
        # killed mid-export leaves no plaintext temp file beside the app's model, only a dir
        # that the next start-up removes (_remove_stale_workdirs).
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
        decision = evaluate_trial(trial, self.health.read(since=started), now, self.trial_policy)
        if decision.inferences != st.trial_inferences:
            st = self._save(model, transition(st, TrialProgress(decision.inferences), now))
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
        new = self._save(model, transition(st, Committed(decision.reason), self.clock()))
        self._outcome_event(new, reason=decision.reason, inferences=decision.inferences)
        return False

    def _rollback(self, model: str, st: UpdateState, reason: str) -> None:
        slots = self.slots(model)
        active = slots.active_name()
        assert active is not None
        new = self._save(model, transition(st, RollBack(reason, active=active), self.clock()))
        if new.expected_active and new.expected_active != active:
            slots.switch_to(new.expected_active)
        if st.slot is not None and st.slot != slots.active_name():
            with contextlib.suppress(SlotError):
                slots.discard(st.slot)
        self._export_active(model)
        self._outcome_event(new, reason=reason)
        log.warning("rolled back", extra={"model": model, "version": st.version,
                                          "reason": reason})

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
        new = self._save(model, transition(st, RollBack("operator rollback", active=active,
                                                        manual=True), self.clock()))
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
        self.mark_stopped()

    def mark_stopped(self) -> None:
        """Record a clean stop, so the next start-up does not treat a trial as a crash."""
        for model in self.layout.model_names():
            self.store(model).mark_stopped()


def _check_version_str(version: str) -> None:
    try:
        parse_version(version)
    except EdgepkgError as exc:
        raise UpdateRefusedError(f"assigned version {version!r} is not a semantic version") from exc


def _remove_stale_workdirs(runtime_dir: Path) -> None:
    """Remove the scratch dirs (decrypted patch, base model, half-written export: plaintext) that
    updater processes killed mid-way left in the runtime dir (``.work-<pid>[-export]`` whose
    process is gone)."""
    if not runtime_dir.is_dir():
        return
    for sub in runtime_dir.glob(".work-*"):
        pid = sub.name.removeprefix(".work-").split("-")[0]  # .work-<pid>[-export]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(sub, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass


# --- status (read-only; no network, no token needed) ------------------------------------------


class _NoSealer:
    """Status reads slot metadata only; it never decrypts (no token needed)."""

    def seal(self, out: Any, aad: bytes) -> Any:
        raise SealError("status does not write slots")

    def unseal(self, src: Any, aad: bytes) -> Iterator[bytes]:
        raise SealError("status does not decrypt slots")


def status(config: Config) -> dict[str, Any]:
    layout = Layout(config.state_dir)
    out: dict[str, Any] = {"state_dir": str(layout.root), "models": {}}
    try:
        out["device_id"] = read_enrollment(layout).device_id
    except EnrollmentError:
        out["device_id"] = None
    for model in layout.model_names():
        st = StateStore(layout.model_dir(model) / "state.json").load()
        view = SlotStore(layout.model_dir(model) / "slots", sealer=_NoSealer()).checkin_view()
        out["models"][model] = {
            **view, "phase": st.phase.value,
            "version": st.version, "reason": st.reason, "last_outcome": st.last_outcome,
        }
    out["queued_events"] = len(EventQueue(layout.events)) if layout.events.exists() else 0
    return out
