"""Prometheus gauges for fleet telemetry, from the latest hourly rollup (labels: model,
version, tag; never a device id, so the series count is cohorts, not devices) and the open
telemetry alerts by kind. Read at scrape time, so every app node reports the same numbers."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from update_server.db import Database
from update_server.telemetry.models import TelemetryAlert, TelemetryRollup

_LABELS = ["model", "version", "tag"]
_GAUGES = (
    ("edgepkg_field_devices", "Devices that reported telemetry in the last rolled-up hour"),
    ("edgepkg_field_inferences", "Inferences in the last rolled-up hour"),
    ("edgepkg_field_error_ratio", "Failed inferences / inferences in the last rolled-up hour"),
    ("edgepkg_field_latency_p95_ms", "Mean of the devices' interval p95 latency (ms)"),
    ("edgepkg_field_drift_score", "Mean per-device drift score (PSI, else JS)"),
    ("edgepkg_field_confidence", "Mean top-1 confidence"),
    ("edgepkg_field_accuracy", "Feedback accuracy (correct / labelled)"),
    ("edgepkg_field_temperature_max_celsius", "Hottest CPU/GPU temperature reported"),
)


class TelemetryCollector:
    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        db: Database = self.app.extensions["edgepkg_db"]
        fams = {name: GaugeMetricFamily(name, doc, labels=_LABELS) for name, doc in _GAUGES}
        alerts = GaugeMetricFamily("edgepkg_field_alerts_open", "Open telemetry alerts",
                                   labels=["kind"])
        with db.session() as s:
            latest = s.scalar(select(func.max(TelemetryRollup.bucket)))
            if latest is not None:
                for r in s.scalars(select(TelemetryRollup).where(TelemetryRollup.bucket == latest)):
                    lab = [r.model, r.version, r.tag]
                    fams["edgepkg_field_devices"].add_metric(lab, r.devices)
                    fams["edgepkg_field_inferences"].add_metric(lab, r.inferences)
                    if r.inferences:
                        fams["edgepkg_field_error_ratio"].add_metric(lab, r.errors / r.inferences)
                    for name, value in (
                        ("edgepkg_field_latency_p95_ms", r.p95_mean_ms),
                        ("edgepkg_field_drift_score", r.psi_mean),
                        ("edgepkg_field_confidence", r.confidence_mean),
                        ("edgepkg_field_temperature_max_celsius", r.cpu_temp_max_c),
                    ):
                        if value is not None:
                            fams[name].add_metric(lab, value)
                    if r.feedback_labelled:
                        fams["edgepkg_field_accuracy"].add_metric(
                            lab, r.feedback_correct / r.feedback_labelled)
            for kind, n in s.execute(select(TelemetryAlert.kind, func.count())
                                     .where(TelemetryAlert.is_open)
                                     .group_by(TelemetryAlert.kind)):
                alerts.add_metric([kind], n)
        yield from fams.values()
        yield alerts
