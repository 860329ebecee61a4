"""Telemetry storage: accept a report (idempotent, rate-bounded), roll raw intervals up into
hourly cohort rows, and delete what is past retention.

Functions take the caller's session and never commit, except :func:`maintain`, the periodic job
(rollup + retention), which a cron / ``edgepkg-server`` command runs with its own session.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Connection, Table, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from edgepkg.protocol import ModelTelemetry, TelemetryReport
from update_server.config import ServerConfig
from update_server.db import flush_pending
from update_server.devices.models import Device
from update_server.errors import Error
from update_server.telemetry.models import (
    TelemetryInterval,
    TelemetryQuota,
    TelemetryReport as ReportRow,
    TelemetryRollup,
)

_reports = cast(Table, ReportRow.__table__)
_intervals = cast(Table, TelemetryInterval.__table__)
_rollups = cast(Table, TelemetryRollup.__table__)
_quota = cast(Table, TelemetryQuota.__table__)
ALL_TAG = "*"


class RateLimitedError(Error):
    """A device sends reports faster than its per-minute or per-day allowance."""

    status = 429
    code = "rate_limited"


def _insert(conn: Connection) -> Any:
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


def charge_quota(conn: Connection, cfg: ServerConfig, device_id: str, now: dt.datetime) -> None:
    """Count one report against the device's minute and day; 429 when over either.

    A simple per-device counter row (one SELECT, one write): telemetry is the one device
    message whose volume the device chooses, so it is bounded here whatever the device does.
    """
    minute = now.replace(second=0, microsecond=0)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    q = _quota.c
    row = conn.execute(select(q.minute, q.minute_count, q.day, q.day_count)
                       .where(q.device_id == device_id)).first()
    m_count = row.minute_count if row is not None and row.minute == minute else 0
    d_count = row.day_count if row is not None and row.day == day else 0
    if m_count >= cfg.telemetry_max_per_minute:
        raise RateLimitedError(
            f"more than {cfg.telemetry_max_per_minute} telemetry reports this minute; "
            "retry in a minute (the device keeps its queue)")
    if d_count >= cfg.telemetry_max_per_day:
        raise RateLimitedError(
            f"more than {cfg.telemetry_max_per_day} telemetry reports today (UTC); "
            "the device should lengthen its interval or its byte budget")
    values = {"minute": minute, "minute_count": m_count + 1, "day": day,
              "day_count": d_count + 1}
    conn.execute(
        _insert(conn)(_quota).values(device_id=device_id, **values)
        .on_conflict_do_update(index_elements=["device_id"], set_=values)
    )


def _interval_row(device_id: str, report: TelemetryReport, name: str,
                  m: ModelTelemetry) -> dict[str, Any]:
    conf = m.confidence.mean if m.confidence is not None else None
    return {
        "device_id": device_id, "seq": report.seq, "model": name, "version": m.version,
        "interval_end": report.interval_end, "inferences": m.inferences, "errors": m.errors,
        "latency_p50_ms": m.latency_p50_ms, "latency_p95_ms": m.latency_p95_ms,
        "feedback_labelled": m.feedback_labelled, "feedback_correct": m.feedback_correct,
        "confidence_mean": conf,
        **{k: m.drift.get(k) for k in ("psi", "js", "ks", "confidence_drop",
                                        "prediction_shift")},
        "summaries": {
            "latency_ms": m.latency_ms.to_json() if m.latency_ms else None,
            "class_counts": list(m.class_counts),
            "scores": m.scores.to_json() if m.scores else None,
            "confidence": m.confidence.to_json() if m.confidence else None,
            "features": [f.to_json() for f in m.features],
        },
    }


def store_report(
    session: Session, device_id: str, report: TelemetryReport, now: dt.datetime
) -> bool:
    """Insert the report and its model intervals; False when ``(device, seq)`` was stored
    before (a resend after a lost reply or a power cut): nothing is written twice."""
    flush_pending(session)
    conn = session.connection()
    hw = report.hardware.to_json()
    res = conn.execute(
        _insert(conn)(_reports)
        .values(device_id=device_id, seq=report.seq, interval_start=report.interval_start,
                interval_end=report.interval_end, received_at=now,
                dropped_intervals=report.dropped_intervals, **hw)
        .on_conflict_do_nothing(index_elements=["device_id", "seq"])
        .returning(_reports.c.seq)
    )
    if res.first() is None:
        return False
    rows = [_interval_row(device_id, report, n, m) for n, m in report.models.items()]
    if rows:
        conn.execute(_intervals.insert(), rows)
    return True


# --- rollup and retention --------------------------------------------------------------------


def _hour(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def _add_hist(acc: dict[str, Any], hist: Any) -> None:
    """Add a latency histogram into ``acc`` when the edges match (they are the protocol's)."""
    if not isinstance(hist, dict) or not isinstance(hist.get("counts"), list):
        return
    if not acc:
        acc["edges"] = list(hist.get("edges") or [])
        acc["counts"] = [0] * len(hist["counts"])
    if acc["edges"] != hist.get("edges") or len(acc["counts"]) != len(hist["counts"]):
        return
    acc["counts"] = [a + int(b) for a, b in zip(acc["counts"], hist["counts"], strict=True)]


def rollup_hour(session: Session, bucket: dt.datetime) -> list[dict[str, Any]]:
    """Recompute the cohort rows of one hour from the raw intervals and upsert them.

    Idempotent: running it again (or after a late report arrived) replaces the hour's rows.
    Cohorts are (model, version, tag) for every current tag of the device, plus ``*``.
    Returns the rows written (the service checks cohort drift on them).
    """
    start = _hour(bucket)
    end = start + dt.timedelta(hours=1)
    iv = _intervals.c
    tags: dict[str, list[str]] = {
        row[0]: row[1] for row in session.execute(select(Device.id, Device.tags))
    }
    hw_temp: dict[tuple[str, int], float | None] = {}
    rc = _reports.c
    for dev, seq, cpu, gpu in session.execute(
        select(rc.device_id, rc.seq, rc.cpu_temp_c, rc.gpu_temp_c)
        .where(rc.interval_end >= start, rc.interval_end < end)
    ):
        temps = [t for t in (cpu, gpu) if t is not None]
        hw_temp[(dev, seq)] = max(temps) if temps else None
    acc: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"devices": set(), "reports": 0, "inferences": 0, "errors": 0, "p95": [],
                 "labelled": 0, "correct": 0, "conf": [], "psi": {}, "temp": None,
                 "hist": {}})
    for r in session.execute(
        select(iv.device_id, iv.seq, iv.model, iv.version, iv.inferences, iv.errors,
               iv.latency_p95_ms, iv.feedback_labelled, iv.feedback_correct,
               iv.confidence_mean, iv.psi, iv.js, iv.summaries)
        .where(iv.interval_end >= start, iv.interval_end < end)
    ):
        for tag in [ALL_TAG, *(tags.get(r.device_id) or [])]:
            a = acc[(r.model, r.version, tag[:100])]
            a["devices"].add(r.device_id)
            a["reports"] += 1
            a["inferences"] += r.inferences
            a["errors"] += r.errors
            a["labelled"] += r.feedback_labelled
            a["correct"] += r.feedback_correct
            if r.latency_p95_ms is not None:
                a["p95"].append(r.latency_p95_ms)
            if r.confidence_mean is not None:
                a["conf"].append(r.confidence_mean)
            drift = r.psi if r.psi is not None else r.js
            if drift is not None:
                a["psi"].setdefault(r.device_id, []).append(drift)
            t = hw_temp.get((r.device_id, r.seq))
            if t is not None:
                a["temp"] = t if a["temp"] is None else max(a["temp"], t)
            _add_hist(a["hist"], (r.summaries or {}).get("latency_ms"))
    out = []
    for (model, version, tag), a in acc.items():
        per_device_psi = [statistics.fmean(v) for v in a["psi"].values()]
        out.append({
            "model": model, "version": version, "tag": tag, "bucket": start,
            "devices": len(a["devices"]), "reports": a["reports"],
            "inferences": a["inferences"], "errors": a["errors"],
            "p95_mean_ms": statistics.fmean(a["p95"]) if a["p95"] else None,
            "p95_max_ms": max(a["p95"]) if a["p95"] else None,
            "feedback_labelled": a["labelled"], "feedback_correct": a["correct"],
            "confidence_mean": statistics.fmean(a["conf"]) if a["conf"] else None,
            "psi_mean": statistics.fmean(per_device_psi) if per_device_psi else None,
            "psi_max": max(per_device_psi) if per_device_psi else None,
            "cpu_temp_max_c": a["temp"], "latency_hist": a["hist"],
            "_device_psi": per_device_psi,
        })
    conn = session.connection()
    conn.execute(delete(_rollups).where(_rollups.c.bucket == start))
    if out:
        conn.execute(_rollups.insert(), [{k: v for k, v in r.items() if not k.startswith("_")}
                                         for r in out])
    return out


def purge(session: Session, cfg: ServerConfig, now: dt.datetime) -> tuple[int, int]:
    """Delete raw rows past ``telemetry_raw_retention_days`` and rollups past
    ``telemetry_rollup_retention_days``; return (raw reports, rollup rows) deleted."""
    conn = session.connection()
    raw_cut = now - dt.timedelta(days=cfg.telemetry_raw_retention_days)
    conn.execute(delete(_intervals).where(_intervals.c.interval_end < raw_cut))
    raw = conn.execute(delete(_reports).where(_reports.c.interval_end < raw_cut)).rowcount
    roll_cut = now - dt.timedelta(days=cfg.telemetry_rollup_retention_days)
    rolled = conn.execute(delete(_rollups).where(_rollups.c.bucket < roll_cut)).rowcount
    return int(raw or 0), int(rolled or 0)


def hours_to_roll(last_done: dt.datetime | None, now: dt.datetime) -> Iterable[dt.datetime]:
    """The hours from the one after ``last_done`` (or the current one) up to the current one:
    the current hour is rolled up too (partially) so charts are fresh, and again next run."""
    current = _hour(now)
    h = current if last_done is None else _hour(last_done)
    while h <= current:
        yield h
        h += dt.timedelta(hours=1)
