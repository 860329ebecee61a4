"""Telemetry, persisted: accept a report, apply the alert rules of :mod:`.rules` with their
hysteresis state, and the periodic job (rollup, cohort drift, dark devices, retention).

Alert transitions (open / resolve) queue a signed webhook (:mod:`update_server.webhooks`) in
the same transaction. Open alerts join the fleet alert list through :func:`open_alerts`
(called by :func:`update_server.alerts.service.fleet_alerts`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgepkg.protocol import TelemetryReport
from update_server.alerts import rules as al
from update_server.config import ServerConfig
from update_server.db import Database
from update_server.devices.models import Device
from update_server.telemetry import rules, storage
from update_server.telemetry.models import (
    TelemetryAlert,
    TelemetryBaseline,
    TelemetryReport as ReportRow,
)
from update_server.webhooks import service as webhooks

log = logging.getLogger("update_server.telemetry")


def ingest(
    session: Session, cfg: ServerConfig, device_id: str, report: TelemetryReport,
    now: dt.datetime, th: rules.Thresholds = rules.DEFAULT,
) -> bool:
    """Store one report and run the per-interval rules; return False for a duplicate."""
    storage.charge_quota(session.connection(), cfg, device_id, now)
    if not storage.store_report(session, device_id, report, now):
        return False
    checks: list[rules.Check] = []
    for name, m in report.models.items():
        base_row = session.get(TelemetryBaseline, (device_id, name))
        base = al.Baseline(base_row.p95_ms, base_row.samples) if base_row else None
        checks += rules.model_checks(device_id, name, m, base, th)
        new = al.update_baseline(base, m.latency_p95_ms, ratio=th.latency_ratio)
        if new is not None and new != base:
            if base_row is None:
                session.add(TelemetryBaseline(device_id=device_id, model=name,
                                              p95_ms=new.p95_ms, samples=new.samples))
            else:
                base_row.p95_ms, base_row.samples = new.p95_ms, min(new.samples, 1_000_000)
    checks += rules.hardware_checks(device_id, report.hardware, th)
    apply_checks(session, cfg, checks, now, th)
    # a report is the end of darkness: resolve at once (the alert is time-based)
    dark = session.get(TelemetryAlert, f"device_dark:{device_id}")
    if dark is not None and dark.is_open:
        apply_checks(session, cfg, [rules.dark_check(device_id, report.interval_end, now,
                                                     cfg.telemetry_dark_after_s)],
                     now, rules.Thresholds(resolve_after=1))
    return True


def apply_checks(
    session: Session, cfg: ServerConfig, checks: Iterable[rules.Check], now: dt.datetime,
    th: rules.Thresholds = rules.DEFAULT, *, open_after: int | None = None,
) -> list[tuple[rules.Check, rules.Transition]]:
    """Fold checks into their persisted states; queue a webhook for each transition."""
    out = []
    for c in checks:
        row = session.get(TelemetryAlert, c.key)
        old = (rules.AlertState(row.is_open, row.bad_streak, row.good_streak, row.opened_at,
                                row.message) if row is not None else None)
        if row is None and not c.bad:
            continue  # nothing to remember about a subject that was never bad
        new, transition = rules.step(old, c, now, th, open_after=open_after)
        if row is None:
            row = TelemetryAlert(key=c.key, kind=c.kind, subject=c.subject, model=c.model,
                                 severity=c.severity)
            session.add(row)
        row.is_open, row.bad_streak, row.good_streak = new.is_open, new.bad_streak, new.good_streak
        row.opened_at, row.message, row.updated_at = new.opened_at, new.message, now
        if c.bad:
            row.details = dict(c.details)
        if transition == "resolved":
            row.resolved_at = now
        if transition is not None:
            webhooks.enqueue(session, cfg, f"alert.{transition}", {
                "key": c.key, "kind": c.kind, "severity": c.severity, "subject": c.subject,
                "model": c.model, "message": new.message if transition == "opened" else
                f"resolved: {new.message}", "details": dict(c.details)}, now)
        out.append((c, transition))
    return out


def open_alerts(session: Session, *, limit: int = 1000) -> list[al.Alert]:
    """Open telemetry alerts in the fleet alert list's shape."""
    return [
        rules.as_alert(a.kind, a.severity, a.subject, a.model, a.message, a.opened_at, a.details)
        for a in session.scalars(select(TelemetryAlert).where(TelemetryAlert.is_open)
                                 .order_by(TelemetryAlert.opened_at).limit(limit))
    ]


def dark_sweep(session: Session, cfg: ServerConfig, now: dt.datetime) -> int:
    """Open ``device_dark`` for enabled devices whose last report is too old; return how many
    are dark now. One grouped query over the (device_id, interval_end) index."""
    last = session.execute(
        select(ReportRow.device_id, func.max(ReportRow.interval_end))
        .join(Device, Device.id == ReportRow.device_id)
        .where(Device.status == "enabled").group_by(ReportRow.device_id)
    )
    checks = [rules.dark_check(d, end, now, cfg.telemetry_dark_after_s) for d, end in last]
    dark = [c for c in checks if c.bad]
    apply_checks(session, cfg, dark, now, open_after=1)
    return len(dark)


def cohort_checks(
    session: Session, cfg: ServerConfig, rows: Sequence[dict[str, object]], bucket: dt.datetime,
    now: dt.datetime, th: rules.Thresholds = rules.DEFAULT,
) -> int:
    """Cohort drift of one *completed* hour, applied once per hour; return how many of the
    checked cohorts have an open alert now."""
    checks = []
    for r in rows:
        scores = r.get("_device_psi")
        if not isinstance(scores, list):
            continue
        c = rules.cohort_drift_check(str(r["model"]), str(r["version"]), str(r["tag"]),
                                     scores, th)
        if c is None:
            continue
        row = session.get(TelemetryAlert, c.key)
        if row is not None and row.details.get("bucket") == bucket.isoformat():
            continue  # this hour was counted already
        checks.append(rules.Check(c.kind, c.severity, c.subject, c.bad, c.message, c.model,
                                  {**c.details, "bucket": bucket.isoformat()}))
    done = apply_checks(session, cfg, checks, now, th)
    for c, _ in done:  # remember the hour on good checks too (details are kept only if bad)
        row = session.get(TelemetryAlert, c.key)
        if row is not None:
            row.details = {**row.details, "bucket": bucket.isoformat()}
    return sum(1 for c, _ in done
               if (row := session.get(TelemetryAlert, c.key)) is not None and row.is_open)


def maintain(db: Database, cfg: ServerConfig, now: dt.datetime) -> dict[str, int]:
    """The periodic job: roll up the last and the current hour (idempotent), check cohort drift
    on the last full hour, open dark-device alerts, apply retention. Safe to run often."""
    this_hour = storage._hour(now)
    last_hour = this_hour - dt.timedelta(hours=1)
    out: dict[str, int] = {}
    try:
        with db.session() as s:
            rows = storage.rollup_hour(s, last_hour)
            out["cohort_drift"] = cohort_checks(s, cfg, rows, last_hour, now)
            out["rollup_rows"] = len(rows) + len(storage.rollup_hour(s, this_hour))
            out["dark"] = dark_sweep(s, cfg, now)
            raw, rolled = storage.purge(s, cfg, now)
            out["purged_reports"], out["purged_rollups"] = raw, rolled
    except IntegrityError:
        # another node ran the same hour at the same moment; its result is as good
        log.info("telemetry maintenance raced another node; skipped this round")
    return out
