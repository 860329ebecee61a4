"""``GET /api/v1/fleet/versions?model=NAME``: how many devices run each version of a model.

Read by ``edgepkg publish --delta-from-fleet URL`` to make deltas from the versions the fleet
runs. The answer is the document ``edgepkg.repo.parse_fleet_versions`` reads::

    {"model": "det", "versions": {"1.0.0": 412, "4.0.0": 37}, "devices": 449}

Counts come from each device's last check-in (the ``device_models`` table, active slot).
Disabled devices are left out: they get no updates, so a delta for them would be wasted.
The blueprint registers its OpenAPI paths itself, so ``create_app`` needs only one line.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from edgepkg.errors import ProtocolError
from edgepkg.protocol import check_target_model
from update_server.db import get_session
from update_server.devices.models import DEVICE_ENABLED, Device, DeviceModel
from update_server.errors import BadRequestError
from update_server.openapi import ERRORS
from update_server.operators.auth import require_operator

bp = Blueprint("fleet_versions", __name__, url_prefix="/api/v1")


@bp.get("/fleet/versions")
@require_operator("viewer")
def fleet_versions() -> ResponseReturnValue:
    model = request.args.get("model")
    if not model:
        raise BadRequestError("give the model: /api/v1/fleet/versions?model=NAME")
    try:
        check_target_model(model)
    except ProtocolError as exc:
        raise BadRequestError(str(exc)) from None
    rows = get_session().execute(
        select(DeviceModel.version, func.count())
        .join(Device, Device.id == DeviceModel.device_id)
        .where(
            DeviceModel.model == model,
            DeviceModel.version.is_not(None),
            Device.status == DEVICE_ENABLED,
        )
        .group_by(DeviceModel.version)
    )
    versions = {str(version): int(count) for version, count in rows}
    return jsonify(model=model, versions=versions, devices=sum(versions.values()))


OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/fleet/versions": {
        "get": {
            "summary": "Devices per running version of a model (for fleet-aware deltas)",
            "security": [{"operatorToken": []}],
            "x-required-role": "viewer",
            "parameters": [
                {"name": "model", "in": "query", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {
                    "description": "version -> number of enabled devices running it",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["model", "versions", "devices"],
                                "properties": {
                                    "model": {"type": "string"},
                                    "versions": {
                                        "type": "object",
                                        "additionalProperties": {"type": "integer"},
                                    },
                                    "devices": {"type": "integer"},
                                },
                            }
                        }
                    },
                },
                **{code: ERRORS[code] for code in ("400", "401", "403")},
            },
        }
    }
}
