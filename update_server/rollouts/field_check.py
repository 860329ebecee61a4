"""The field gate, persisted side: build the canary and control cohorts of a rollout from the
database and hand them to the pure :func:`.field_gate.evaluate`.

Canary: devices admitted to the rollout that run its version now. Control: enabled devices the
same selector matches, not admitted, that run the previous version (the one most admitted
devices ran before). Both measured on telemetry since the current stage began.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from update_server.devices.models import Device
from update_server.rollouts import engine as eng, field_gate as fg
from update_server.rollouts.models import Rollout, RolloutDevice
from update_server.telemetry.cohort import cohort_sample


def with_field_gate(
    spec: eng.RolloutSpec, decision: eng.Decision, result: fg.GateResult
) -> eng.Decision:
    """A failed gate pauses (or aborts, per ``on_failure``); a gate still waiting for evidence
    holds an advance; otherwise the engine's decision stands."""
    if result.verdict == "fail":
        return eng.Decision(spec.on_failure, result.reason)
    if result.verdict == "wait" and decision.action in ("advance", "complete"):
        return eng.Decision("none", result.reason)
    return decision


def field_gate_result(
    session: Session, r: Rollout, spec: eng.RolloutSpec, state: eng.RolloutState,
    versions: Mapping[str, str | None], now: dt.datetime,
) -> fg.GateResult:
    gate = spec.field_gate
    if gate is None:
        return fg.GateResult("pass", "no field gate")
    admitted: dict[str, str | None] = {
        row[0]: row[1] for row in session.execute(
            select(RolloutDevice.device_id, RolloutDevice.from_version)
            .where(RolloutDevice.rollout_id == r.id))
    }
    before = Counter(v for v in admitted.values() if v and v != r.version).most_common(1)
    previous = before[0][0] if before else None
    canary = {d for d in admitted if versions.get(d) == r.version}
    control: set[str] = set()
    if previous is not None:
        for dev_id, tags in session.execute(
            select(Device.id, Device.tags).where(Device.status == "enabled")
        ):
            if (dev_id not in admitted and versions.get(dev_id) == previous
                    and spec.selector.matches(tags or [])):
                control.add(dev_id)
    since = state.stage_started_at
    can = cohort_sample(session, r.model, r.version, canary, since)
    con = (cohort_sample(session, r.model, previous, control, since) if previous is not None
           else fg.CohortSample())
    return fg.evaluate(gate, can, con, stage_number=state.stage_index + 1,
                       soaked_s=(now - since).total_seconds())
