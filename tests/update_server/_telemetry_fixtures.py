"""Helpers of the telemetry tests: report builders, a signed-client server on a fake clock, and
a local HTTP receiver for webhooks (a real socket on 127.0.0.1)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from edgepkg.protocol import HardwareHealth, Histogram, ModelTelemetry, Moments, TelemetryReport
from update_server.db import get_db
from update_server.operators.auth import create_enrollment_token, create_operator_token
from update_server.testing import SoftwareDevice

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
INTERVAL = dt.timedelta(minutes=5)
MODEL = "det"


def model(
    version: str = "1.0.0", *, p95: float = 10.0, psi: float | None = 0.02,
    inferences: int = 600, errors: int = 0, labelled: int = 0, correct: int = 0,
    confidence: float | None = 0.9,
) -> ModelTelemetry:
    return ModelTelemetry(
        version=version, inferences=inferences, errors=errors,
        latency_ms=Histogram((1.0, 5.0, 20.0), (10, 500, 90, 0)),
        latency_p50_ms=p95 / 2, latency_p95_ms=p95,
        class_counts=(300, 300),
        confidence=Moments(inferences, confidence, 0.05, 0.2, 1.0) if confidence else None,
        feedback_labelled=labelled, feedback_correct=correct,
        drift={"psi": psi} if psi is not None else {},
    )


def report(seq: int, *, end: dt.datetime | None = None, hardware: HardwareHealth | None = None,
           **kw: Any) -> TelemetryReport:
    end = end or T0 + seq * INTERVAL
    return TelemetryReport(
        seq=seq, interval_start=end - INTERVAL, interval_end=end,
        models={MODEL: model(**kw)},
        hardware=hardware or HardwareHealth(cpu_temp_c=55.0, mem_used_bytes=1e9,
                                            mem_total_bytes=4e9, disk_free_bytes=5e9,
                                            disk_total_bytes=16e9, load1=0.5, uptime_s=1e4),
    )


class Clock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


class TelemetryServer:
    def __init__(self, app: Flask, clock: Clock) -> None:
        self.app, self.clock = app, clock
        self.client: FlaskClient = app.test_client()
        self.db = get_db(app)

    def token(self, role: str) -> str:
        with self.db.session() as s:
            _, token = create_operator_token(s, name=f"t-{role}", role=role)
        return token

    def enroll(self, tags: list[str] | None = None) -> SoftwareDevice:
        device = SoftwareDevice()
        with self.db.session() as s:
            _, token = create_enrollment_token(s, tags=tags or ["site:a"])
        r = self.client.post("/api/v1/enroll", data=device.enroll_body(token),
                             content_type="application/json")
        assert r.status_code == 201, r.get_json()
        return device

    def post(self, device: SoftwareDevice, body: Any, *, as_device: str | None = None) -> Any:
        path = f"/api/v1/devices/{as_device or device.device_id}/telemetry"
        data = json.dumps(body).encode()
        headers = device.signed_headers("POST", path, data,
                                        timestamp=int(self.clock.now.timestamp()))
        return self.client.post(path, data=data, headers=headers)

    def send(self, device: SoftwareDevice, rep: TelemetryReport) -> Any:
        self.clock.now = max(self.clock.now, rep.interval_end + dt.timedelta(seconds=5))
        return self.post(device, rep.to_json())

    def alerts(self, kind: str | None = None) -> list[dict[str, Any]]:
        q = f"?kind={kind}" if kind else ""
        r = self.client.get(f"/api/v1/alerts{q}",
                            headers={"Authorization": f"Bearer {self.token('viewer')}"})
        assert r.status_code == 200
        return list(r.get_json()["alerts"])


class Receiver:
    """Webhook receiver: answers ``codes`` in turn (then 200), records what it got."""

    def __init__(self, codes: list[int] | None = None) -> None:
        self.codes = list(codes or [])
        self.got: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.got.append((dict(self.headers.items()), body))
                code = outer.codes.pop(0) if outer.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    @contextmanager
    def running(self) -> Iterator[Receiver]:
        t = threading.Thread(target=self.server.serve_forever, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
