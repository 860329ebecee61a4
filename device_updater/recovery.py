"""Start-up recovery of the update state machine (pure decisions, thin application).

:func:`recovery_action` is pure: given the persisted :class:`~device_updater.state.UpdateState`
and a snapshot of the slots it says, for every persisted phase, what start-up does.
:func:`run_recovery` applies it through collaborators passed in (the state file and the slot
store), so this module imports no I/O library (tests/device_updater/test_pure_cores.py).

Recovery rules (``recovery_action``):

============  ==================================================================================
IDLE          nothing (but an active slot that fails its check is replaced by an intact other)
DOWNLOADING   resume (partial downloads are the fetcher's; a stray partial slot is discarded)
VERIFYING     resume (re-verify the downloaded bundle)
INSTALLING    discard the inactive slot's partial work, resume installing
VALIDATING    slot complete: resume validating; otherwise discard it and go back to INSTALLING
SHADOW        as VALIDATING: slot complete: resume shadowing (tallies so far kept, the wait
              clock keeps running from ``shadow_started_at``); otherwise install again
SWITCHING     pointer already on the new slot: enter TRIAL; new slot intact: resume the switch;
              otherwise REJECTED (old slot stays active)
TRIAL         after a crash (no clean stop recorded): roll back (point at the previous slot,
              ROLLED_BACK) — the trial was not committed; if there is no previous model to
              return to, the trial resumes. After a clean stop the trial resumes.
COMMITTED     make sure the committed slot is the active one
REJECTED /    make sure ``expected_active`` is the active slot, discard the bad candidate slot
ROLLED_BACK
============  ==================================================================================

The previous good version set aside in a slot (``displaced/``) when a candidate's write began
there (:mod:`device_updater._displaced`; interrupted renames are settled mechanically first, by
:meth:`SlotStore.settle`). Decided on the phase *after* the rule above (``displaced_fate``):

====================================================  ============================================
the slot is the candidate's and an update is still    **keep** (INSTALLING .. TRIAL: a reject or a
in progress                                           rollback will put it back)
the slot is active (no candidate in progress there:   **drop** (COMMITTED: the other slot holds the
committed, or a rollback that had nowhere to go)      version the candidate replaced)
otherwise, the slot holds the abandoned candidate,    **restore** (REJECTED, ROLLED_BACK, IDLE, a
a partial write or nothing                            candidate given up by the crash-loop cap)
otherwise (the slot holds another complete model)     **drop** (a stale set-aside copy)
====================================================  ============================================

So after any outcome the device holds the active model plus the previous good version.

Crash-loop cap: every recovery after a crash of an in-progress update counts a restart and every
transition counts; past ``Limits.max_restarts`` / ``Limits.max_transitions`` the target is given up
(REJECTED before the switch, ROLLED_BACK after it) with the reason recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from device_updater.errors import StateError
from device_updater.slot_values import ModelSummary, SlotsView, other_slot
from device_updater.state import Limits, Phase, UpdateState

log = logging.getLogger(__name__)

_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class RecoveryAction:
    """What start-up does, in this order: save ``state`` (if ``save``), point at ``activate``,
    discard slot ``discard`` (never the active one), put back the previous version set aside in
    the ``restore`` slots (never the active one) and delete the one in the ``drop`` slots; then,
    if ``resume``, the daemon continues the update from ``state.phase``."""

    state: UpdateState
    save: bool = False
    discard: str | None = None
    activate: str | None = None
    resume: bool = False
    reason: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    # After the discard: slots whose set-aside previous version is put back / deleted.
    restore: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()


Fate = Literal["keep", "restore", "drop"]


def displaced_fate(slots: SlotsView, name: str, state: UpdateState, final_active: str | None
                   ) -> Fate:
    """What happens to the version set aside in slot ``name`` once recovery has left the update
    in ``state`` with ``final_active`` active (pure; the table in the module doc)."""
    if not state.phase.terminal and name == state.slot:
        return "keep"
    if name == final_active:
        return "drop"
    st = slots.slots.get(name)
    if st is None or st.info is None or holds_abandoned_candidate(slots, name, state.candidate):
        return "restore"
    return "drop"


def _with_displaced(action: RecoveryAction, slots: SlotsView) -> RecoveryAction:
    final_active = action.activate or slots.active
    fates = {n: displaced_fate(slots, n, action.state, final_active)
             for n, st in sorted(slots.slots.items()) if st.displaced}
    restore = tuple(n for n, f in fates.items() if f == "restore")
    drop = tuple(n for n, f in fates.items() if f == "drop")
    if not restore and not drop:
        return action
    words = ([f"restore the previous version in slot {n}" for n in restore]
             + [f"delete the set-aside version in slot {n}" for n in drop])
    reason = action.reason if action.reason != "nothing to do" else ""
    return replace(action, restore=restore, drop=drop,
                   # restoring removes the abandoned candidate first: no separate discard
                   discard=None if action.discard in restore else action.discard,
                   reason="; ".join([r for r in (reason,) if r] + words))


def recovery_action(state: UpdateState, slots: SlotsView, now: float,
                    limits: Limits = _DEFAULT_LIMITS, *, crashed: bool = True) -> RecoveryAction:
    """Decide start-up recovery for the persisted ``state`` given the slots (pure).

    ``crashed``: the previous updater process did not stop cleanly (killed, power cut, crash:
    see :meth:`StateStore.mark_stopped`). Only then does a TRIAL roll back and a restart count
    toward the crash-loop cap; after a clean stop (``edge-updater check`` ending, SIGTERM) an
    update in progress simply resumes.
    """
    return _with_displaced(_decide(state, slots, now, limits, crashed=crashed), slots)


def _decide(state: UpdateState, slots: SlotsView, now: float, limits: Limits, *,
            crashed: bool) -> RecoveryAction:
    s = state
    active = slots.active
    cand = s.slot

    def fix_active(expected: str | None, bad: str | None) -> str | None:
        """The slot to point at so that an intact model is active (None: pointer is fine)."""
        for name in (expected, active, other_slot(active) if active else None, "a", "b"):
            if name is not None and name != bad and slots.intact(name):
                return None if name == active else name
        return None

    # --- outcomes --------------------------------------------------------------------------
    if s.phase.terminal:
        bad = cand if s.phase in (Phase.REJECTED, Phase.ROLLED_BACK) else None
        expected = s.expected_active
        if s.phase is Phase.COMMITTED:
            expected = expected or cand
        activate = fix_active(expected, bad)
        final_active = activate or active
        discard = None
        if bad is not None and bad != final_active and holds_abandoned_candidate(
                slots, bad, s.candidate):
            discard = bad
        if activate is None and discard is None:
            return RecoveryAction(state=s, reason="nothing to do")
        return RecoveryAction(
            state=s, discard=discard, activate=activate,
            reason=f"{s.phase.value}: " + ", ".join(
                ([f"point at slot {activate}"] if activate else [])
                + ([f"discard slot {discard}"] if discard else [])),
        )

    # --- an update is in progress: count the restart, cap crash loops ---------------------
    restarted = replace(s, restarts=s.restarts + (1 if crashed else 0), updated_at=now)
    if restarted.restarts > limits.max_restarts:
        reason = (f"crash loop: updater restarted {restarted.restarts} times while installing "
                  f"{s.model} {s.version} (phase {s.phase.value}); target given up")
        if s.phase is Phase.TRIAL or (s.phase is Phase.SWITCHING and active == cand):
            return _rollback_action(restarted, slots, now, reason)
        given = replace(restarted, phase=Phase.REJECTED, reason=reason,
                        expected_active=active, transitions=s.transitions + 1)
        return RecoveryAction(
            state=given, save=True, reason=reason,
            discard=cand if cand and cand != active
            and holds_abandoned_candidate(slots, cand, s.candidate) else None,
            activate=fix_active(active, cand),
        )

    if s.phase in (Phase.DOWNLOADING, Phase.VERIFYING):
        discard = (cand if cand and cand != active
                   and holds_abandoned_candidate(slots, cand, s.candidate) else None)
        return RecoveryAction(state=restarted, save=True, discard=discard,
                              activate=fix_active(active, cand), resume=True,
                              reason=f"resume {s.phase.value}")
    if s.phase is Phase.INSTALLING:
        if cand is None or cand == active:
            return _reject(restarted, slots, "install target slot is unknown or active")
        # A complete other model there is the previous version (its displacement was undone
        # by settle, or never began): the writer sets it aside; only leftovers are discarded.
        return RecoveryAction(state=restarted, save=True,
                              discard=cand if holds_abandoned_candidate(
                                  slots, cand, s.candidate) else None,
                              activate=fix_active(active, cand), resume=True,
                              reason="interrupted install: discard partial slot, install again")
    if s.phase in (Phase.VALIDATING, Phase.SHADOW, Phase.WAITING):
        if cand is None or cand == active:
            return _reject(restarted, slots, "validation slot is unknown or active")
        if _holds_candidate(slots, cand, s):
            return RecoveryAction(state=restarted, save=True, resume=True,
                                  activate=fix_active(active, cand),
                                  reason="interrupted validation: validate again"
                                  if s.phase is Phase.VALIDATING else
                                  "interrupted shadow run: keep shadowing"
                                  if s.phase is Phase.SHADOW else
                                  "validated candidate kept: keep waiting for the window")
        back = replace(restarted, phase=Phase.INSTALLING)
        return RecoveryAction(state=back, save=True, discard=cand if _dirty(slots, cand) else None,
                              activate=fix_active(active, cand), resume=True,
                              reason="candidate slot incomplete during validation: install again")
    if s.phase is Phase.SWITCHING:
        if cand is not None and active == cand and _holds_candidate(slots, cand, s):
            trial = replace(restarted, phase=Phase.TRIAL, trial_started_at=now,
                            trial_inferences=0, transitions=s.transitions + 1)
            return RecoveryAction(state=trial, save=True, resume=True,
                                  reason="switch had completed: trial starts")
        if cand is not None and cand != active and _holds_candidate(slots, cand, s):
            return RecoveryAction(state=restarted, save=True, resume=True,
                                  activate=fix_active(active, cand),
                                  reason="interrupted switch: switch again")
        return _reject(restarted, slots, "candidate slot damaged before the switch completed")
    if s.phase is Phase.TRIAL:
        if cand is not None and active == cand and not crashed and slots.intact(cand):
            return RecoveryAction(state=s, resume=True,
                                  reason="clean restart during the trial: trial continues")
        if cand is not None and active == cand:
            if not slots.intact(other_slot(active)):
                return RecoveryAction(state=restarted, save=True, resume=True,
                                      reason="restarted during trial but no previous model to "
                                      "roll back to: trial continues")
            return _rollback_action(restarted, slots, now,
                                    "updater restarted during the trial before it was committed")
        return _rollback_action(restarted, slots, now,
                                "trial slot is not active at start-up")
    raise StateError(f"no recovery rule for phase {s.phase}")  # pragma: no cover


def holds_abandoned_candidate(slots: SlotsView, name: str,
                              candidate: ModelSummary | None) -> bool:
    """Whether slot ``name`` holds what an abandoned (rejected or rolled-back) candidate left
    there, which is then discarded: the data of an interrupted write, or the candidate itself.

    A complete slot holding another model is the previous good version, untouched because the
    candidate was given up before its writer started (which is the moment that version is set
    aside, to be put back): it is kept, so the device still has two versions
    (docs/device-integrator.md).
    Without a known candidate the slot is treated as the candidate's, as before.
    """
    st = slots.slots.get(name)
    if st is None or (st.info is None and not st.partial):
        return False  # empty: nothing to discard
    if st.info is None:
        return True  # an interrupted write
    return candidate is None or st.info.summary.sha256 == candidate.sha256


def _dirty(slots: SlotsView, name: str) -> bool:
    st = slots.slots.get(name)
    return st is not None and (st.complete or st.partial)


def _holds_candidate(slots: SlotsView, name: str | None, s: UpdateState) -> bool:
    if name is None:
        return False
    st = slots.slots.get(name)
    if st is None or not st.intact or st.info is None:
        return False
    return s.candidate is None or st.info.summary.sha256 == s.candidate.sha256


def _reject(s: UpdateState, slots: SlotsView, reason: str) -> RecoveryAction:
    active = slots.active
    cand = s.slot
    new = replace(s, phase=Phase.REJECTED, reason=reason, expected_active=active,
                  transitions=s.transitions + 1)
    return RecoveryAction(
        state=new, save=True, reason=reason,
        discard=cand if cand and cand != active
        and holds_abandoned_candidate(slots, cand, s.candidate) else None,
    )


def _rollback_action(s: UpdateState, slots: SlotsView, now: float, reason: str) -> RecoveryAction:
    cand = s.slot
    prev = other_slot(cand) if cand else None
    if prev is None or not slots.intact(prev):
        # Nothing to go back to: the candidate stays (it is intact, it passed validation).
        prev = slots.active
    new = replace(s, phase=Phase.ROLLED_BACK, reason=reason, expected_active=prev,
                  transitions=s.transitions + 1, updated_at=now)
    activate = prev if prev is not None and prev != slots.active and slots.intact(prev) else None
    return RecoveryAction(
        state=new, save=True, activate=activate, reason=reason,
        # The candidate is discarded only once it is no longer active (next start-up does it
        # if this one dies between the save and the switch).
        discard=cand if cand and activate is not None and cand == slots.active else None,
    )


class RecoveryStore(Protocol):
    """What :func:`run_recovery` needs of the state file
    (:class:`~device_updater.state_store.StateStore` in production)."""

    def load(self) -> UpdateState: ...

    def save(self, state: UpdateState) -> None: ...

    def was_running(self) -> bool: ...

    def mark_running(self) -> None: ...


class RecoverySlots(Protocol):
    """What :func:`run_recovery` needs of the slot store (:class:`~device_updater.slots.SlotStore`
    in production; a small fake in tests)."""

    def view(self, *, deep: bool = False) -> SlotsView: ...

    def active_name(self) -> str | None: ...

    def switch_to(self, name: str) -> object: ...

    def discard(self, name: str) -> None: ...

    def settle(self) -> None: ...

    def restore_displaced(self, name: str) -> bool: ...

    def drop_displaced(self, name: str) -> bool: ...


def run_recovery(store: RecoveryStore, slots: RecoverySlots, now: float, *, deep: bool = True,
                 limits: Limits = _DEFAULT_LIMITS, crashed: bool | None = None) -> RecoveryAction:
    """Load the state, decide (:func:`recovery_action`) and apply it; return the action.

    ``deep`` decrypts and hashes both slots first (recommended at start-up; a 512 MB model
    costs a few seconds). Order: settle interrupted renames, save the new state, switch the
    pointer, discard, then restore or delete set-aside previous versions.
    ``crashed`` defaults to :meth:`StateStore.was_running` (no clean stop recorded); the
    marker is then set again until the caller's :meth:`StateStore.mark_stopped`.
    """
    state = store.load()
    if crashed is None:
        crashed = store.was_running()
    slots.settle()  # finish or undo set-aside renames a power cut interrupted
    view = slots.view(deep=deep)
    action = recovery_action(state, view, now, limits, crashed=crashed)
    if action.save:
        store.save(action.state)
    if action.activate is not None:
        slots.switch_to(action.activate)
    if action.discard is not None and action.discard != slots.active_name():
        slots.discard(action.discard)
    for name in action.restore:
        if name != slots.active_name():
            slots.restore_displaced(name)
    for name in action.drop:
        slots.drop_displaced(name)
    store.mark_running()
    if action.reason != "nothing to do":
        log.warning("recovery: %s (phase %s)", action.reason, action.state.phase.value)
    return action
