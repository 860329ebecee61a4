"""The SHADOW phase's step (the agent's I/O between validation and the switch).

Each update cycle takes at most ``[shadow] max_samples_per_cycle`` spooled live samples, runs
them through the running model and the candidate (:func:`.run.shadow_batch`), records the
tallies with a ``ShadowProgress`` transition (persisted: a power cut resumes with them), and
asks :func:`.decision.decide_shadow` whether to promote, reject or keep waiting. The decision
goes to the server as a ``validation_result`` event (``stage = "shadow"``) next to the holdout
evidence sent when validation passed.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING

from device_updater.errors import ValidationError
from device_updater.layout import workdir
from device_updater.shadow.decision import ShadowDecision, decide_shadow
from device_updater.shadow.run import shadow_batch
from device_updater.shadow.spool import ShadowSpool
from device_updater.state import ShadowPassed, ShadowProgress, UpdateState
from device_updater.validation.policy import parse_device_policy
from device_updater.validation.runners import runner_external

if TYPE_CHECKING:
    from device_updater.steps import UpdateSteps

log = logging.getLogger("edge_updater")


def step_shadow(steps: UpdateSteps, model: str, st: UpdateState) -> bool:
    """One shadow cycle for ``model``; True when the update moved on to SWITCHING."""
    assert st.slot is not None and st.candidate is not None
    policy = parse_device_policy(st.candidate.policy)
    rule = policy.shadow
    slots = steps.slots(model)
    current = slots.active()
    if rule is None or current is None:
        # Nothing to compare with (first install) or no rule: the holdout verdict stands.
        why = "no running model to shadow" if current is None else "no shadow rule"
        steps._apply(model, st, ShadowPassed(f"shadow skipped: {why}"))
        return True
    cfg = steps.config
    now = steps.clock()
    elapsed = max(0.0, now - (st.shadow_started_at if st.shadow_started_at is not None else now))
    breach: str | None = None
    if cfg.shadow_spool_dir is None:
        # The release asks for a shadow run this device cannot do: its on_timeout rule decides.
        d = decide_shadow(rule, st.shadow_samples, st.shadow_agreed, math.inf)
        decision = ShadowDecision(d.action, d.reason + " (this device has no [shadow] "
                                  "spool_dir configured)", d.samples, d.agreed)
    elif model in steps.shadowed_this_cycle:
        return False  # at most one batch (max_samples_per_cycle) per cycle
    else:
        steps.shadowed_this_cycle.add(model)
        batch = ShadowSpool(cfg.shadow_spool_dir, max_files=cfg.shadow_max_files).take(
            cfg.shadow_max_samples_per_cycle)
        if batch.inputs is not None:
            try:
                with contextlib.ExitStack() as stack:
                    cand = stack.enter_context(slots.exported(st.slot, cfg.runtime_dir))
                    running = stack.enter_context(slots.exported(current.name,
                                                                 cfg.runtime_dir))
                    work = stack.enter_context(workdir(cfg.runtime_dir))
                    res = shadow_batch(cand, st.candidate.format, running, current.format,
                                       batch.inputs, policy, workdir=work,
                                       timeout=cfg.validation_timeout_s, nice=cfg.shadow_nice,
                                       external=runner_external(cfg.external_command))
            except ValidationError as exc:
                reason = f"shadow run failed: {exc}"
                steps._event("validation_result", st, stage="shadow", accepted=False,
                             passed=False, reasons=[reason])
                steps._reject(model, st, reason)
                return False
            st = steps._apply(model, st, ShadowProgress(res.samples, res.agreed))
            breach = res.breach
            log.info("shadow batch", extra={"model": model, "samples": res.samples,
                                            "agreed": res.agreed})
        decision = decide_shadow(rule, st.shadow_samples, st.shadow_agreed, elapsed, breach)
    if decision.action == "wait":
        return False
    accepted = decision.action == "promote"
    steps._event("validation_result", st, stage="shadow", accepted=accepted, passed=accepted,
                 reasons=[decision.reason], shadow=decision.evidence(rule))
    if not accepted:
        steps._reject(model, st, decision.reason)
        return False
    steps._apply(model, st, ShadowPassed(decision.reason))
    return True
