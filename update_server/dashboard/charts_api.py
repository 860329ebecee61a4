"""Operator API for the dashboard's charts (viewer role; session or bearer token).

``GET /api/v1/charts/fleet``: one series per cohort (model × version × tag, ``*`` = every
device of the version); ``GET /api/v1/charts/cohort``: one cohort and its devices (the drill
down); ``GET /api/v1/charts/devices/<id>``: one series per model on that device;
``GET /api/v1/charts/rollouts/<id>``: the rollout's canary (devices of its selector on its
version) against its control (same selector, still on another version). ``hours`` (1..720,
default 24) sets the window, ``bucket`` (seconds) the resolution. :data:`OPENAPI_PATHS`
documents the routes for ``/api/openapi.json``. The dashboard serves the same views under
``/dashboard/series/...`` (session cookie instead of bearer token; see ``views.py``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from update_server.dashboard import telemetry_rows as rows
from update_server.dashboard.series import METRICS, bucket_seconds, cohort_key, cohorts, series
from update_server.db import get_session
from update_server.errors import BadRequestError
from update_server.operators.auth import require_operator
from update_server.rollouts import service as svc
from update_server.services import services

bp = Blueprint("charts_api", __name__, url_prefix="/api/v1/charts")

RULES = {
    "fleet": "/api/v1/charts/fleet",
    "cohort": "/api/v1/charts/cohort",
    "device": "/api/v1/charts/devices/<device_id>",
    "rollout": "/api/v1/charts/rollouts/<rollout_id>",
}
"""The API routes; the dashboard serves the same views under ``/dashboard/series/...`` for its
session-authenticated chart script."""

MAX_HOURS = 720
MAX_COHORTS = 50
"""The fleet chart draws at most this many cohorts (largest first): a legend stays readable."""
GATE_METRICS = {
    "max_latency_ratio": "p95_ms",
    "max_error_rate_delta": "error_rate",
    "max_drift_delta": "drift",
    "max_confidence_drop": "confidence",
    "max_accuracy_drop": "accuracy",
}
"""Rollout field-gate limit → the series metric it compares (canary vs control)."""


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise BadRequestError(f"{name} must be an integer from {lo} to {hi}", code="bad_query")
    return int(raw)


def _window() -> tuple[dt.datetime, int]:
    now = services().now()
    since = now - dt.timedelta(hours=_int_arg("hours", 24, 1, MAX_HOURS))
    wanted = _int_arg("bucket", 300, 10, 86_400)
    return since, bucket_seconds(since, now, wanted)


def _meta() -> list[dict[str, str]]:
    return [{"key": k, "label": label} for k, label in METRICS]


@bp.get("/fleet")
@require_operator("viewer")
def fleet() -> ResponseReturnValue:
    since, bucket = _window()
    db = get_session()
    points = rows.fleet_points(db, since, model=request.args.get("model") or None)
    groups = cohorts(points, rows.device_tags(db, {p.device_id for p in points}))
    ranked = sorted(groups.items(), key=lambda kv: (-len({p.device_id for p in kv[1]}), kv[0]))
    items = [
        {"model": m, "version": v, "tag": t, "label": cohort_key(m, v, t),
         **series(pts, bucket)}
        for (m, v, t), pts in ranked[:MAX_COHORTS]
    ]
    return jsonify(metrics=_meta(), series=items, since=since.isoformat(), bucket_s=bucket,
                   cohorts=len(groups))


@bp.get("/cohort")
@require_operator("viewer")
def cohort() -> ResponseReturnValue:
    model, version = request.args.get("model"), request.args.get("version")
    tag = request.args.get("tag") or "*"
    if not model or not version:
        raise BadRequestError("model and version are required", code="bad_query")
    since, bucket = _window()
    db = get_session()
    points = rows.cohort_points(db, model, [version], since)
    tags = rows.device_tags(db, {p.device_id for p in points})
    if tag != "*":
        points = [p for p in points if tag in tags.get(p.device_id, [])]
    by_device: dict[str, list[Any]] = {}
    for p in points:
        by_device.setdefault(p.device_id, []).append(p)
    devices = [
        {"device_id": d, "tags": tags.get(d, []), "last_p95_ms": ps[-1].p95_ms,
         "last_drift": ps[-1].drift, "reports": len(ps)}
        for d, ps in sorted(by_device.items())
    ]
    label = cohort_key(model, version, tag)
    return jsonify(metrics=_meta(), series=[{"label": label, **series(points, bucket)}],
                   devices=devices, model=model, version=version, tag=tag, bucket_s=bucket)


@bp.get("/devices/<device_id>")
@require_operator("viewer")
def device(device_id: str) -> ResponseReturnValue:
    since, bucket = _window()
    points = rows.device_points(get_session(), device_id, since)
    by_model: dict[tuple[str, str], list[Any]] = {}
    for p in points:
        by_model.setdefault((p.model, p.version), []).append(p)
    items = [{"model": m, "version": v, "label": f"{m} {v}", **series(ps, bucket)}
             for (m, v), ps in sorted(by_model.items())]
    return jsonify(metrics=_meta(), series=items, device_id=device_id, bucket_s=bucket)


@bp.get("/rollouts/<rollout_id>")
@require_operator("viewer")
def rollout(rollout_id: str) -> ResponseReturnValue:
    db = get_session()
    r = svc.rollout_json(db, svc.get_rollout(db, rollout_id))
    since, bucket = _window()
    selector_tags = set((r.get("selector") or {}).get("tags") or [])
    points = rows.cohort_points(db, r["model"], None, since)
    if selector_tags:
        tags = rows.device_tags(db, {p.device_id for p in points})
        points = [p for p in points if selector_tags & set(tags.get(p.device_id, []))]
    canary = [p for p in points if p.version == r["version"]]
    control = [p for p in points if p.version != r["version"]]
    gate = r.get("field_gate") or {}
    gated = [metric for limit, metric in GATE_METRICS.items() if gate.get(limit) is not None]
    return jsonify(
        metrics=_meta(), gate_metrics=gated or [k for k, _ in METRICS], field_gate=gate or None,
        series=[{"label": f"canary ({r['version']})", "role": "canary", **series(canary, bucket)},
                {"label": "control", "role": "control", **series(control, bucket)}],
        rollout_id=rollout_id, bucket_s=bucket,
    )


_ERR: dict[str, Any] = {
    "description": 'JSON error {"error": {"code", "message"}}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_SEC: list[dict[str, list[str]]] = [{"operatorToken": []}]
_OBJ = {"description": "chart series",
        "content": {"application/json": {"schema": {"type": "object"}}}}
_WINDOW = [
    {"name": "hours", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                 "maximum": MAX_HOURS}},
    {"name": "bucket", "in": "query", "schema": {"type": "integer", "minimum": 10,
                                                  "maximum": 86_400}},
]


def _get(summary: str, params: list[dict[str, Any]], codes: tuple[str, ...]) -> dict[str, Any]:
    return {"get": {"summary": summary, "security": _SEC, "x-required-role": "viewer",
                    "parameters": params + _WINDOW,
                    "responses": {"200": _OBJ, **dict.fromkeys(codes, _ERR)}}}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/charts/fleet": _get(
        "Field telemetry series per cohort (model x version x tag)",
        [{"name": "model", "in": "query", "schema": {"type": "string"}}],
        ("400", "401", "403"),
    ),
    "/api/v1/charts/cohort": _get(
        "Field telemetry series of one cohort, with its devices",
        [{"name": n, "in": "query", "required": n != "tag", "schema": {"type": "string"}}
         for n in ("model", "version", "tag")],
        ("400", "401", "403"),
    ),
    "/api/v1/charts/devices/{device_id}": _get(
        "Field telemetry series of one device, per model", [_path("device_id")],
        ("400", "401", "403", "404"),
    ),
    "/api/v1/charts/rollouts/{rollout_id}": _get(
        "Canary vs control field telemetry of a rollout", [_path("rollout_id")],
        ("400", "401", "403", "404"),
    ),
}
