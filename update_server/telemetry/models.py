"""Telemetry tables (on the server's one :class:`~update_server.db.Base`).

Layout, chosen so that it stays fast at 100k devices on PostgreSQL without partitioning:

* ``telemetry_reports`` — one row per accepted report (its primary key ``(device_id, seq)``
  makes a resent report a no-op) with the device's hardware numbers;
* ``telemetry_intervals`` — one row per model per report: the key aggregates as columns (what
  alerts, rollups and the field gate read) and the histograms as JSON (what charts read);
  indexed on ``(device_id, interval_end)`` for one device's history and on
  ``(model, version, interval_end)`` for a cohort's;
* ``telemetry_rollups`` — one row per (model, version, tag, hour): the cohort time series kept
  for months (raw rows are kept for days), rebuilt idempotently by the rollup job;
* ``telemetry_alerts`` — hysteresis state of every telemetry alert (open or not);
* ``telemetry_baselines`` — each device's own p95 latency baseline per model;
* ``telemetry_quota`` — reports accepted per device in the current minute and day.

Retention deletes by ``interval_end`` / ``bucket`` ranges through those indexes; see
docs/benchmarks.md ("Field telemetry") for why we do not partition (yet).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from update_server.db import Base, utcnow

_Count = BigInteger


class TelemetryReport(Base):
    __tablename__ = "telemetry_reports"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    interval_start: Mapped[dt.datetime] = mapped_column()
    interval_end: Mapped[dt.datetime] = mapped_column()
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    dropped_intervals: Mapped[int] = mapped_column(Integer, default=0)
    cpu_temp_c: Mapped[float | None] = mapped_column(Float, default=None)
    gpu_temp_c: Mapped[float | None] = mapped_column(Float, default=None)
    mem_used_bytes: Mapped[float | None] = mapped_column(Float, default=None)
    mem_total_bytes: Mapped[float | None] = mapped_column(Float, default=None)
    disk_free_bytes: Mapped[float | None] = mapped_column(Float, default=None)
    disk_total_bytes: Mapped[float | None] = mapped_column(Float, default=None)
    load1: Mapped[float | None] = mapped_column(Float, default=None)
    uptime_s: Mapped[float | None] = mapped_column(Float, default=None)

    __table_args__ = (
        Index("ix_telemetry_reports_device_end", "device_id", "interval_end"),
        Index("ix_telemetry_reports_end", "interval_end"),
    )


class TelemetryInterval(Base):
    __tablename__ = "telemetry_intervals"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(100))
    interval_end: Mapped[dt.datetime] = mapped_column()
    inferences: Mapped[int] = mapped_column(_Count, default=0)
    errors: Mapped[int] = mapped_column(_Count, default=0)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float, default=None)
    latency_p95_ms: Mapped[float | None] = mapped_column(Float, default=None)
    feedback_labelled: Mapped[int] = mapped_column(_Count, default=0)
    feedback_correct: Mapped[int] = mapped_column(_Count, default=0)
    confidence_mean: Mapped[float | None] = mapped_column(Float, default=None)
    psi: Mapped[float | None] = mapped_column(Float, default=None)
    js: Mapped[float | None] = mapped_column(Float, default=None)
    ks: Mapped[float | None] = mapped_column(Float, default=None)
    confidence_drop: Mapped[float | None] = mapped_column(Float, default=None)
    prediction_shift: Mapped[float | None] = mapped_column(Float, default=None)
    summaries: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Histograms (latency, classes, features), score/confidence moments, as sent."""

    __table_args__ = (
        Index("ix_telemetry_intervals_device_end", "device_id", "interval_end"),
        Index("ix_telemetry_intervals_cohort", "model", "version", "interval_end"),
    )


class TelemetryRollup(Base):
    __tablename__ = "telemetry_rollups"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(100), primary_key=True)
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)
    """A device tag, or ``*`` for every device of the version."""
    bucket: Mapped[dt.datetime] = mapped_column(primary_key=True)
    devices: Mapped[int] = mapped_column(Integer, default=0)
    reports: Mapped[int] = mapped_column(Integer, default=0)
    inferences: Mapped[int] = mapped_column(_Count, default=0)
    errors: Mapped[int] = mapped_column(_Count, default=0)
    p95_mean_ms: Mapped[float | None] = mapped_column(Float, default=None)
    p95_max_ms: Mapped[float | None] = mapped_column(Float, default=None)
    feedback_labelled: Mapped[int] = mapped_column(_Count, default=0)
    feedback_correct: Mapped[int] = mapped_column(_Count, default=0)
    confidence_mean: Mapped[float | None] = mapped_column(Float, default=None)
    psi_mean: Mapped[float | None] = mapped_column(Float, default=None)
    psi_max: Mapped[float | None] = mapped_column(Float, default=None)
    cpu_temp_max_c: Mapped[float | None] = mapped_column(Float, default=None)
    latency_hist: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_telemetry_rollups_bucket", "bucket"),)


class TelemetryAlert(Base):
    """Hysteresis state of one alert: ``key`` is ``kind:subject[:model]``."""

    __tablename__ = "telemetry_alerts"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    subject: Mapped[str] = mapped_column(String(300))
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    severity: Mapped[str] = mapped_column(String(16))
    is_open: Mapped[bool] = mapped_column(default=False, index=True)
    bad_streak: Mapped[int] = mapped_column(Integer, default=0)
    good_streak: Mapped[int] = mapped_column(Integer, default=0)
    opened_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TelemetryBaseline(Base):
    __tablename__ = "telemetry_baselines"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    p95_ms: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer, default=1)


class TelemetryQuota(Base):
    __tablename__ = "telemetry_quota"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    minute: Mapped[dt.datetime] = mapped_column()
    minute_count: Mapped[int] = mapped_column(Integer, default=0)
    day: Mapped[dt.datetime] = mapped_column()
    day_count: Mapped[int] = mapped_column(Integer, default=0)
