"""Device API: ``POST /api/v1/devices/<device_id>/telemetry`` (signed like check-ins), and the
periodic maintenance worker (rollup, cohort drift, dark devices, retention).

The answer is ``{"accepted": true, "duplicate": bool}``: a resent report (same ``seq``) is
accepted again and stored once, so a device can retry blindly after a lost reply.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue

from edgepkg.protocol import parse_telemetry_report
from update_server import _validate as v
from update_server.db import Database, get_db, get_session
from update_server.devices.auth import authenticate_device, require_own_device
from update_server.services import services
from update_server.telemetry import service

log = logging.getLogger("update_server.telemetry")

bp = Blueprint("telemetry_api", __name__, url_prefix="/api/v1")

MAINTAIN_EVERY_S = 300.0


@bp.post("/devices/<device_id>/telemetry")
def post_telemetry(device_id: str) -> ResponseReturnValue:
    found = services()
    db = get_session()
    now = found.now()
    device = authenticate_device(db, request, now, found.config.signature_window_s)
    require_own_device(device, device_id)
    report = parse_telemetry_report(v.json_body(request))  # ProtocolError -> 400 with field
    stored = service.ingest(db, found.config, device.id, report, now)
    db.commit()
    return jsonify(accepted=True, duplicate=not stored)


class MaintenanceWorker:
    """Runs :func:`~.service.maintain` every ``period_s`` in a daemon thread."""

    def __init__(self, app: Flask, db: Database, period_s: float = MAINTAIN_EVERY_S) -> None:
        self.app, self.db, self.period_s = app, db, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgepkg-telemetry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                found = services(self.app)
                service.maintain(self.db, found.config, found.now())
            except Exception:  # keep running; the job is idempotent and retried next round
                log.exception("telemetry maintenance failed")


def init_app(app: Flask) -> None:
    """Start the maintenance worker (not in tests: they call ``service.maintain``)."""
    if not services(app).config.testing:
        worker = MaintenanceWorker(app, get_db(app))
        worker.start()
        app.extensions["edgepkg_telemetry_worker"] = worker


_ERR: dict[str, Any] = {
    "description": 'JSON error {"error": {"code", "message"}}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/devices/{device_id}/telemetry": {
        "post": {
            "summary": "Send one field telemetry report (idempotent by seq; rate-bounded)",
            "security": [{"deviceSignature": []}],
            "parameters": [{"name": "device_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object",
                "description": "edgepkg.protocol.TelemetryReport.to_json()",
                "required": ["seq", "interval_start", "interval_end"],
                "properties": {
                    "seq": {"type": "integer", "minimum": 0},
                    "interval_start": {"type": "string", "format": "date-time"},
                    "interval_end": {"type": "string", "format": "date-time"},
                    "models": {"type": "object"},
                    "hardware": {"type": "object"},
                    "dropped_intervals": {"type": "integer", "minimum": 0},
                }}}}},
            "responses": {
                "200": {"description": "accepted", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"accepted": {"type": "boolean"},
                                                     "duplicate": {"type": "boolean"}}}}}},
                "400": _ERR, "401": _ERR, "403": _ERR, "404": _ERR, "413": _ERR,
                "429": _ERR,
            },
        }
    },
}
