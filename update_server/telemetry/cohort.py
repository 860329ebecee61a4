"""Field metrics of a cohort of devices, shaped for the rollout field gate.

One value per device for the per-device metrics (median of its interval p95s, mean drift,
mean confidence), pooled counts for error rate and feedback accuracy. Reads the raw intervals
of one (model, version) since a time through the ``(model, version, interval_end)`` index and
keeps the devices asked for.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from update_server.rollouts.field_gate import CohortSample
from update_server.telemetry.models import TelemetryInterval as TI


def cohort_sample(
    session: Session, model: str, version: str, devices: Collection[str], since: dt.datetime
) -> CohortSample:
    p95: dict[str, list[float]] = defaultdict(list)
    drift: dict[str, list[float]] = defaultdict(list)
    conf: dict[str, list[float]] = defaultdict(list)
    seen: set[str] = set()
    inferences = errors = labelled = correct = 0
    for r in session.execute(
        select(TI.device_id, TI.inferences, TI.errors, TI.latency_p95_ms, TI.psi, TI.js,
               TI.confidence_mean, TI.feedback_labelled, TI.feedback_correct)
        .where(TI.model == model, TI.version == version, TI.interval_end >= since)
    ):
        if r.device_id not in devices:
            continue
        seen.add(r.device_id)
        inferences += r.inferences
        errors += r.errors
        labelled += r.feedback_labelled
        correct += r.feedback_correct
        if r.latency_p95_ms is not None:
            p95[r.device_id].append(r.latency_p95_ms)
        d = r.psi if r.psi is not None else r.js
        if d is not None:
            drift[r.device_id].append(d)
        if r.confidence_mean is not None:
            conf[r.device_id].append(r.confidence_mean)
    return CohortSample(
        p95_ms=tuple(statistics.median(v) for v in p95.values()),
        drift=tuple(statistics.fmean(v) for v in drift.values()),
        confidence=tuple(statistics.fmean(v) for v in conf.values()),
        inferences=inferences, errors=errors, labelled=labelled, correct=correct,
        devices=len(seen),
    )
