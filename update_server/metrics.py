"""Prometheus metrics at ``/metrics``.

Request count and latency per endpoint; devices by model/version and by status, computed from
the database at scrape time (so every app node reports the same fleet numbers). Under gunicorn,
set ``PROMETHEUS_MULTIPROC_DIR`` (``edgepkg-server run`` does) so request metrics of all
workers are merged. Other parts add collectors with ``add_collector(app, collector)``, where
``collector.collect()`` yields ``prometheus_client`` metric families (rollout gauges).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select

from update_server.config import ServerConfig
from update_server.devices.models import Device, DeviceModel
from update_server.operators.auth import require_operator

bp = Blueprint("metrics", __name__)


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


_REGISTRY = CollectorRegistry(auto_describe=False)
REQUESTS = Counter(
    "edgepkg_http_requests",
    "HTTP requests handled",
    ["endpoint", "method", "status"],
    registry=_REGISTRY,
)
LATENCY = Histogram(
    "edgepkg_http_request_duration_seconds",
    "HTTP request latency",
    ["endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=_REGISTRY,
)


class FleetCollector:
    """Devices by model/version and by status, from the database."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        db = self.app.extensions["edgepkg_db"]
        by_version = GaugeMetricFamily(
            "edgepkg_devices_by_version",
            "Devices running each model version (active slot)",
            labels=["model", "version"],
        )
        by_status = GaugeMetricFamily(
            "edgepkg_devices", "Enrolled devices by status", labels=["status"]
        )
        with db.session() as s:
            for model, version, n in s.execute(
                select(DeviceModel.model, DeviceModel.version, func.count()).group_by(
                    DeviceModel.model, DeviceModel.version
                )
            ):
                by_version.add_metric([model, version or "none"], n)
            for status, n in s.execute(select(Device.status, func.count()).group_by(Device.status)):
                by_status.add_metric([status], n)
        yield by_version
        yield by_status


def add_collector(app: Flask, collector: Collector) -> None:
    app.extensions["edgepkg_metric_collectors"].append(collector)


def _before() -> None:
    g._edgepkg_t0 = time.perf_counter()


def _after(response: Any) -> Any:
    t0 = g.pop("_edgepkg_t0", None)
    if t0 is not None:
        endpoint = request.endpoint or "unmatched"
        LATENCY.labels(endpoint).observe(time.perf_counter() - t0)
        REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
    return response


def init_app(app: Flask) -> None:
    app.extensions["edgepkg_metric_collectors"] = [FleetCollector(app)]
    app.before_request(_before)
    app.after_request(_after)
    app.register_blueprint(bp)


def _render() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        out = generate_latest(registry)
    else:
        out = generate_latest(_REGISTRY)
    extra = CollectorRegistry(auto_describe=False)
    for c in current_app.extensions["edgepkg_metric_collectors"]:
        extra.register(c)
    return out + generate_latest(extra)


@bp.get("/metrics")
def metrics_public() -> Response:
    cfg: ServerConfig = current_app.config["EDGEPKG"]
    if not cfg.metrics_public:
        return _metrics_protected()
    return Response(_render(), mimetype=CONTENT_TYPE_LATEST)


@require_operator("viewer")
def _metrics_protected() -> Response:
    return Response(_render(), mimetype=CONTENT_TYPE_LATEST)
