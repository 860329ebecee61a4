"""Operator API: devices (list/get/tag/disable/delete), their events, enrollment tokens."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgepkg.protocol import parse_time
from update_server import _validate as v
from update_server.db import get_session, utcnow
from update_server.devices.inventory import DeviceFilter, find_devices, online_after
from update_server.devices.models import (
    DEVICE_DISABLED,
    DEVICE_ENABLED,
    Device,
    Event,
)
from update_server.errors import BadRequestError, ConflictError, NotFoundError
from update_server.operators.auth import create_enrollment_token, current_operator, require_operator
from update_server.operators.models import EnrollmentToken
from update_server.services import services

bp = Blueprint("operator_api", __name__, url_prefix="/api/v1")

MAX_PAGE = 500
DEVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def device_json(d: Device, *, detail: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "device_id": d.id,
        "name": d.name,
        "status": d.status,
        "tags": list(d.tags or []),
        "created_at": d.created_at.isoformat(),
        "last_seen": d.last_seen.isoformat() if d.last_seen else None,
        "state": d.state,
        "models": {m.model: m.version for m in d.models},
    }
    if detail:
        out["notes"] = d.notes
        out["facts"] = d.facts or {}
        out["last_checkin"] = d.last_checkin
        out["last_error"] = d.last_error
        out["free_disk_bytes"] = d.free_disk_bytes
        out["public_key_pem"] = d.public_key_pem
    return out


def event_json(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "type": e.type,
        "time": e.time.isoformat(),
        "received_at": e.received_at.isoformat(),
        "model": e.model,
        "version": e.version,
        "rollout_id": e.rollout_id,
        "details": e.details or {},
    }


def _page_args() -> tuple[int, int]:
    limit = v.query_int(request, "limit", 100, minimum=1, maximum=MAX_PAGE)
    offset = v.query_int(request, "offset", 0, minimum=0)
    return limit, offset


def _get_device(device_id: str) -> Device:
    device = get_session().get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id[:64]!r}")
    return device


@bp.get("/devices")
@require_operator("viewer")
def list_devices() -> ResponseReturnValue:
    db = get_session()
    limit, offset = _page_args()
    # The one filter of the inventory (also the dashboard's): q, tag, fact, model, version,
    # status, seen, selector. Listed in creation order, as before.
    found = find_devices(
        db, DeviceFilter.from_args(request.args), online_after=online_after(services().now())
    )
    devices = sorted(found, key=lambda d: (d.created_at, d.id))
    total = len(devices)
    page = devices[offset : offset + limit]
    return jsonify(total=total, devices=[device_json(d) for d in page])


@bp.get("/devices/<device_id>")
@require_operator("viewer")
def get_device(device_id: str) -> ResponseReturnValue:
    return jsonify(device_json(_get_device(device_id), detail=True))


@bp.patch("/devices/<device_id>")
@require_operator("release")
def patch_device(device_id: str) -> ResponseReturnValue:
    db = get_session()
    device = _get_device(device_id)
    body = v.json_body(request)
    unknown = set(body) - {"tags", "add_tags", "remove_tags", "status", "name", "notes"}
    if unknown:
        raise BadRequestError(f"unknown fields: {', '.join(sorted(unknown))}")
    tags = list(device.tags or [])
    if "tags" in body:
        tags = v.get_tags(body, "tags", required=True)
    for t in v.get_tags(body, "add_tags"):
        if t not in tags:
            tags.append(t)
    remove = set(v.get_tags(body, "remove_tags"))
    tags = [t for t in tags if t not in remove]
    if len(tags) > 64:
        raise BadRequestError("a device may have at most 64 tags")
    device.tags = tags
    if "status" in body:
        status = body["status"]
        if status not in (DEVICE_ENABLED, DEVICE_DISABLED):
            raise BadRequestError("status must be 'enabled' or 'disabled'")
        device.status = status
    if "name" in body:
        device.name = _device_name(db, device, body["name"])
    if "notes" in body:
        notes = body["notes"]
        if notes is not None and (not isinstance(notes, str) or len(notes) > 4000):
            raise BadRequestError(
                "notes must be a string of at most 4000 characters", field="notes"
            )
        device.notes = (notes.strip() or None) if notes is not None else None
    db.commit()
    return jsonify(device_json(device, detail=True))


def _device_name(db: Session, device: Device, name: Any) -> str | None:
    """A unique operator-set name (None clears it); a clear error when another device has it."""
    if name is None or name == "":
        return None
    if not isinstance(name, str) or not DEVICE_NAME_RE.match(name):
        raise BadRequestError(
            "name must be 1-100 letters, digits, '_', '.', '-' (starting with a letter or digit)",
            field="name",
        )
    other = db.scalar(select(Device.id).where(Device.name == name, Device.id != device.id))
    if other is not None:
        raise ConflictError(f"device {other[:16]} is already named {name!r}", code="name_taken")
    return name


@bp.delete("/devices/<device_id>")
@require_operator("admin")
def delete_device(device_id: str) -> ResponseReturnValue:
    db = get_session()
    device = _get_device(device_id)
    db.delete(device)
    db.commit()
    return "", 204


@bp.get("/devices/<device_id>/events")
@require_operator("viewer")
def device_events(device_id: str) -> ResponseReturnValue:
    db = get_session()
    _get_device(device_id)
    limit, offset = _page_args()
    q = select(Event).where(Event.device_id == device_id)
    etype = request.args.get("type")
    if etype is not None:
        q = q.where(Event.type == etype)
    total = db.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = db.scalars(q.order_by(Event.time.desc(), Event.seq.desc()).limit(limit).offset(offset))
    return jsonify(total=total, events=[event_json(e) for e in rows])


def token_json(t: EnrollmentToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "max_uses": t.max_uses,
        "uses": t.uses,
        "expires_at": t.expires_at.isoformat() if t.expires_at else None,
        "tags": list(t.tags or []),
        "note": t.note,
        "created_by": t.created_by,
        "created_at": t.created_at.isoformat(),
        "revoked": t.revoked,
    }


_ENROLLMENT_FIELDS = frozenset({"max_uses", "expires_in_s", "expires_at", "tags", "note"})


@bp.post("/enrollment-tokens")
@require_operator("admin")
def create_enrollment() -> ResponseReturnValue:
    db = get_session()
    body = v.json_body(request)
    # Refused rather than ignored: {"uses": 5} (the CLI flag's name) once silently made a
    # single-use token.
    unknown = set(body) - _ENROLLMENT_FIELDS
    if unknown:
        hint = " (the quota field is max_uses)" if "uses" in unknown else ""
        raise BadRequestError(f"unknown fields: {', '.join(sorted(unknown))}{hint}")
    max_uses = v.get_int(body, "max_uses", required=False, minimum=1, maximum=1_000_000) or 1
    expires_in = v.get_int(
        body, "expires_in_s", required=False, minimum=1, maximum=10 * 365 * 86400, nullable=True
    )
    expires_at: dt.datetime | None = None
    if expires_in is not None:
        expires_at = utcnow() + dt.timedelta(seconds=expires_in)
    elif body.get("expires_at") is not None:
        expires_at = parse_time(body["expires_at"], "expires_at")
    tags = v.get_tags(body)
    note = v.get_str(body, "note", required=False, max_len=200, nullable=True)
    op = current_operator()
    row, plaintext = create_enrollment_token(
        db,
        max_uses=max_uses,
        expires_at=expires_at,
        tags=tags,
        note=note,
        created_by=op.name if op else None,
    )
    db.commit()
    return jsonify(token=plaintext, **token_json(row)), 201


@bp.get("/enrollment-tokens")
@require_operator("admin")
def list_enrollment_tokens() -> ResponseReturnValue:
    rows = get_session().scalars(select(EnrollmentToken).order_by(EnrollmentToken.created_at))
    return jsonify(tokens=[token_json(t) for t in rows])


@bp.delete("/enrollment-tokens/<token_id>")
@require_operator("admin")
def revoke_enrollment_token(token_id: str) -> ResponseReturnValue:
    db = get_session()
    row = db.get(EnrollmentToken, token_id)
    if row is None:
        raise NotFoundError("no such enrollment token")
    row.revoked = True
    db.commit()
    return "", 204


@bp.get("/releases")
@require_operator("viewer")
def list_releases() -> ResponseReturnValue:
    releases = services().current_releases()
    return jsonify(
        releases=[
            {
                "name": r.name,
                "version": r.version,
                "kind": r.kind,
                "target": r.target_path,
                "length": r.length,
                "sha256": r.sha256,
                "base_version": r.base_version,
            }
            for r in releases
        ]
    )


@bp.get("/whoami")
@require_operator("viewer")
def whoami() -> ResponseReturnValue:
    op = current_operator()
    assert op is not None
    return jsonify(kind=op.kind, id=op.id, name=op.name, role=op.role)
