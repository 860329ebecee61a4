"""Operator API for rollouts and alerts (bearer token; deny by default).

``POST /api/v1/rollouts`` (release), ``GET /api/v1/rollouts`` and ``/api/v1/rollouts/<id>``
(viewer), ``POST /api/v1/rollouts/<id>/pause|resume|abort|rollback`` (release),
Errors are the server's JSON errors (4xx for bad input).
:data:`OPENAPI_PATHS` documents these routes for ``/api/openapi.json``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from update_server import _validate as v
from update_server.db import get_session
from update_server.errors import BadRequestError, NotFoundError
from update_server.metrics import add_collector
from update_server.operators.auth import current_operator, require_operator
from update_server.rollouts import service as svc
from update_server.rollouts.engine import STATUSES
from update_server.rollouts.models import Rollout, RolloutDevice
from update_server.services import services
from update_server.tuf.releases import Release

bp = Blueprint("rollouts_api", __name__, url_prefix="/api/v1")

def server_now() -> dt.datetime:
    return services().now()


def _releases() -> list[Release]:
    return services().current_releases()


def _actor() -> str | None:
    op = current_operator()
    return op.name if op is not None else None


def _optional_body() -> dict[str, Any]:
    if not request.get_data(cache=True):
        return {}
    return v.json_body(request)


def _reason(body: dict[str, Any]) -> str | None:
    reason = body.get("reason")
    if reason is None:
        return None
    if not isinstance(reason, str) or len(reason) > 500:
        raise BadRequestError("'reason' must be a string of at most 500 characters")
    return reason.strip() or None


def poll_interval() -> int:
    return services().config.poll_interval


@bp.post("/rollouts")
@require_operator("release")
def create_rollout() -> ResponseReturnValue:
    db = get_session()
    body = v.json_body(request)
    r = svc.create_rollout(db, body, releases=_releases(), now=server_now(), created_by=_actor())
    out = svc.rollout_json(db, r)
    db.commit()
    return jsonify(out), 201


@bp.get("/rollouts")
@require_operator("viewer")
def list_rollouts() -> ResponseReturnValue:
    db = get_session()
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequestError(f"status must be one of {', '.join(STATUSES)}")
    rows = svc.list_rollouts(db)
    items = [svc.rollout_json(db, r) for r in rows if status is None or r.status == status]
    return jsonify(rollouts=items)


@bp.get("/rollouts/<rollout_id>")
@require_operator("viewer")
def get_rollout(rollout_id: str) -> ResponseReturnValue:
    db = get_session()
    return jsonify(svc.rollout_json(db, svc.get_rollout(db, rollout_id)))


@bp.post("/rollouts/<rollout_id>/<action>")
@require_operator("release")
def rollout_action(rollout_id: str, action: str) -> ResponseReturnValue:
    db = get_session()
    body = _optional_body()
    now = server_now()
    if action == "rollback":
        new = svc.rollback(db, rollout_id, releases=_releases(), now=now, actor=_actor())
        out = svc.rollout_json(db, new)
        db.commit()
        return jsonify(out), 201
    if action not in ("pause", "resume", "abort"):
        raise NotFoundError(f"unknown rollout action {action!r}")
    r = svc.operator_action(db, rollout_id, action, now=now, actor=_actor(), reason=_reason(body))
    out = svc.rollout_json(db, r)
    db.commit()
    return jsonify(out)


# --- Prometheus ------------------------------------------------------------------------------


class RolloutCollector:
    """Rollout stage and per-outcome device counts, read from the database at scrape time."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        db = self.app.extensions["edgepkg_db"]
        stage = GaugeMetricFamily(
            "edgepkg_rollout_stage",
            "Current stage (1-based) of each active rollout",
            labels=["rollout", "model", "version", "status"],
        )
        percent = GaugeMetricFamily(
            "edgepkg_rollout_stage_percent",
            "Share of the selected fleet the current stage admits",
            labels=["rollout", "model", "version"],
        )
        devices = GaugeMetricFamily(
            "edgepkg_rollout_devices",
            "Devices admitted to a rollout by outcome",
            labels=["rollout", "result"],
        )
        with db.session() as s:
            active = list(
                s.scalars(select(Rollout).where(Rollout.status.in_(("running", "paused"))))
            )
            for r in active:
                stage.add_metric([r.id, r.model, r.version, r.status], r.stage_index + 1)
                percent.add_metric(
                    [r.id, r.model, r.version], float(r.stages[r.stage_index]["percent"])
                )
            ids = [r.id for r in active]
            if ids:
                for rid, result, n in s.execute(
                    select(RolloutDevice.rollout_id, RolloutDevice.result, func.count())
                    .where(RolloutDevice.rollout_id.in_(ids))
                    .group_by(RolloutDevice.rollout_id, RolloutDevice.result)
                ):
                    devices.add_metric([rid, result], n)
        yield stage
        yield percent
        yield devices


def register_metrics(app: Flask) -> None:
    """Add the rollout gauges to ``/metrics`` (call after ``metrics.init_app``)."""
    add_collector(app, RolloutCollector(app))


# --- OpenAPI ---------------------------------------------------------------------------------

_ERR: dict[str, Any] = {
    "description": 'JSON error {"error": {"code", "message"}}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_ID = {"name": "rollout_id", "in": "path", "required": True, "schema": {"type": "string"}}
_SEC: list[dict[str, list[str]]] = [{"operatorToken": []}]

ROLLOUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "version"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "string", "description": "semantic version of a current release"},
        "selector": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 32},
                "groups": {"type": "array", "items": {"type": "string"}, "maxItems": 32},
            },
        },
        "stages": {
            "type": "array",
            "minItems": 1,
            "maxItems": 20,
            "items": {
                "type": "object",
                "required": ["percent"],
                "properties": {
                    "percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                    "min_soak_seconds": {"type": "integer", "minimum": 0},
                },
            },
            "description": "increasing percentages, the last one 100",
        },
        "success_share": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.95},
        "failure_share": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
            "default": 0.2,
        },
        "min_devices": {"type": "integer", "minimum": 1, "default": 3},
        "on_failure": {"type": "string", "enum": ["pause", "abort"], "default": "pause"},
        "group": {
            "type": "string",
            "description": "a saved dynamic group (POST /api/v1/groups); resolved at every "
            "evaluation, so devices that join the group later join the rollout",
        },
    },
}
_ROLLOUT_OUT = {"type": "object", "description": "a rollout with its state and per-stage counts"}
_JSON = "application/json"


def _ok(desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": desc, "content": {_JSON: {"schema": schema or _ROLLOUT_OUT}}}


def _action(summary: str, code: str = "200") -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": _SEC,
            "x-required-role": "release",
            "parameters": [_ID],
            "requestBody": {
                "required": False,
                "content": {
                    _JSON: {
                        "schema": {"type": "object", "properties": {"reason": {"type": "string"}}}
                    }
                },
            },
            "responses": {
                code: _ok("the rollout"),
                "400": _ERR,
                "401": _ERR,
                "403": _ERR,
                "404": _ERR,
                "409": _ERR,
            },
        }
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/rollouts": {
        "post": {
            "summary": "Create a staged rollout",
            "security": _SEC,
            "x-required-role": "release",
            "requestBody": {"required": True, "content": {_JSON: {"schema": ROLLOUT_SCHEMA}}},
            "responses": {
                "201": _ok("created"),
                "400": _ERR,
                "401": _ERR,
                "403": _ERR,
                "404": _ERR,
                "409": _ERR,
            },
        },
        "get": {
            "summary": "List rollouts (newest first)",
            "security": _SEC,
            "x-required-role": "viewer",
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "schema": {"type": "string", "enum": list(STATUSES)},
                }
            ],
            "responses": {
                "200": _ok("rollouts", {"type": "object"}),
                "400": _ERR,
                "401": _ERR,
                "403": _ERR,
            },
        },
    },
    "/api/v1/rollouts/{rollout_id}": {
        "get": {
            "summary": "One rollout",
            "security": _SEC,
            "x-required-role": "viewer",
            "parameters": [_ID],
            "responses": {
                "200": _ok("the rollout"),
                "400": _ERR,
                "401": _ERR,
                "403": _ERR,
                "404": _ERR,
            },
        }
    },
    "/api/v1/rollouts/{rollout_id}/pause": _action("Pause a running rollout"),
    "/api/v1/rollouts/{rollout_id}/resume": _action("Resume a paused rollout"),
    "/api/v1/rollouts/{rollout_id}/abort": _action("Abort a rollout"),
    "/api/v1/rollouts/{rollout_id}/rollback": _action(
        "Abort and move the rollout's devices back to the previous version", "201"
    ),
}
