"""Device-facing API: enrollment, signed check-ins, events, rollout status."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any, cast

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Connection, Table, bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from update_server import _validate as v
from update_server._crypto import parse_device_public_key
from update_server._services import rollout_service
from update_server.assignments import safe_assignments
from update_server.auth import consume_enrollment_token, hash_token
from update_server.config import ServerConfig
from update_server.db import get_session, utcnow
from update_server.device_auth import DeviceRecord, authenticate_device, require_own_device
from update_server.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
)
from update_server.models import EVENT_TYPES, Device, DeviceModel, EnrollmentToken, Event

bp = Blueprint("devices_api", __name__, url_prefix="/api/v1")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_VERSION = re.compile(r"^[0-9A-Za-z.+-]{1,100}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ROLLOUT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_EVENT_ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")


def _config() -> ServerConfig:
    cfg = current_app.config["EDGEPKG"]
    assert isinstance(cfg, ServerConfig)
    return cfg


def _now() -> dt.datetime:
    clock = current_app.extensions.get("edgepkg_clock")
    return clock() if clock is not None else utcnow()


def _signed_device(db: Session, device_id: str) -> DeviceRecord:
    cfg = _config()
    device = authenticate_device(db, request, _now(), cfg.signature_window_s)
    require_own_device(device, device_id)
    return device


# --- enrollment ------------------------------------------------------------------------------


@bp.post("/enroll")
def enroll() -> ResponseReturnValue:
    body = v.json_body(request)
    token = v.get_str(body, "enrollment_token", max_len=200)
    pem = v.get_str(body, "public_key_pem", max_len=4096)
    facts = v.get_dict(body, "facts", required=False) or {}
    tags = v.get_tags(body)
    assert token is not None and pem is not None
    _key, device_id = parse_device_public_key(pem)
    db = get_session()
    now = _now()
    cfg = _config()
    existing = db.get(Device, device_id)
    if existing is not None:
        # A retry after a lost reply: same key, same token -> same answer, no second use.
        row = db.scalar(
            select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(token))
        )
        if row is not None and existing.enrollment_token_id == row.id and existing.enabled:
            return jsonify(device_id=device_id, poll_interval=cfg.poll_interval), 200
        raise ConflictError("a device with this key is already enrolled", code="already_enrolled")
    row = consume_enrollment_token(db, token, now)
    # Tags select rollouts, so only the operator decides them (through the enrollment token or
    # the API). What the device asks for is kept as a fact an operator may act on.
    if tags:
        facts = {**facts, "requested_tags": tags}
    db.add(
        Device(
            id=device_id,
            public_key_pem=pem,
            tags=list(row.tags),
            facts=facts,
            created_at=now,
            enrollment_token_id=row.id,
        )
    )
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        raise ConflictError(
            "a device with this key is already enrolled", code="already_enrolled"
        ) from None
    return jsonify(device_id=device_id, poll_interval=cfg.poll_interval), 201


# --- check-in --------------------------------------------------------------------------------


def _parse_models(raw: Any, limit: int) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequestError("'models' must be an object of model name -> slots")
    if len(raw) > limit:
        raise BadRequestError(f"at most {limit} models per check-in")
    out: dict[str, dict[str, Any]] = {}
    for name, info in raw.items():
        if not _NAME.match(name):
            raise BadRequestError(f"model name {name[:80]!r} is invalid")
        if not isinstance(info, dict):
            raise BadRequestError(f"models[{name!r}] must be an object")
        active = info.get("active_slot")
        if active not in ("a", "b", None):
            raise BadRequestError(f"models[{name!r}].active_slot must be 'a' or 'b'")
        slots_raw = info.get("slots") or {}
        if not isinstance(slots_raw, dict) or set(slots_raw) - {"a", "b"}:
            raise BadRequestError(f"models[{name!r}].slots must have only keys 'a' and 'b'")
        slots: dict[str, dict[str, str] | None] = {}
        for slot in ("a", "b"):
            s = slots_raw.get(slot)
            if s is None:
                slots[slot] = None
                continue
            if not isinstance(s, dict):
                raise BadRequestError(f"models[{name!r}].slots.{slot} must be an object or null")
            version = s.get("version")
            sha = s.get("sha256")
            if not isinstance(version, str) or not _VERSION.match(version):
                raise BadRequestError(f"models[{name!r}].slots.{slot}.version is invalid")
            if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
                raise BadRequestError(f"models[{name!r}].slots.{slot}.sha256 must be hex SHA-256")
            slots[slot] = {"version": version, "sha256": sha}  # type: ignore[dict-item]
        out[name] = {"active_slot": active, "slots": slots}
    return out


def _parse_health(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequestError("'health' must be an object")
    out: dict[str, Any] = {}
    for key in ("latency_p50_ms", "latency_p95_ms", "last_metric"):
        val = raw.get(key)
        if val is not None and (isinstance(val, bool) or not isinstance(val, int | float)):
            raise BadRequestError(f"health.{key} must be a number or null")
        out[key] = val
    errors = raw.get("errors")
    if errors is not None and (isinstance(errors, bool) or not isinstance(errors, int | dict)):
        raise BadRequestError("health.errors must be an integer or an object of counts")
    out["errors"] = errors
    return out


@bp.post("/devices/<device_id>/checkin")
def checkin(device_id: str) -> ResponseReturnValue:
    db = get_session()
    cfg = _config()
    device = _signed_device(db, device_id)
    body = v.json_body(request)
    models = _parse_models(body.get("models"), cfg.max_models_per_checkin)
    state = v.get_str(body, "state", required=False, max_len=32, nullable=True)
    health = _parse_health(body.get("health"))
    free_disk = v.get_int(body, "free_disk_bytes", required=False, minimum=0, nullable=True)
    last_error = v.get_str(body, "last_error", required=False, max_len=4096, nullable=True)
    facts = v.get_dict(body, "facts", required=False)
    now = _now()

    device.last_checkin = {
        "time": now.isoformat(),
        "models": models,
        "state": state,
        "health": health,
        "free_disk_bytes": free_disk,
        "last_error": last_error,
    }
    values: dict[str, Any] = {
        "last_seen": now,
        "state": state,
        "last_error": last_error,
        "free_disk_bytes": free_disk,
        "last_checkin": device.last_checkin,
    }
    if facts is not None:
        values["facts"] = facts
    conn = db.connection()
    # One UPDATE of the device row (Core: no ORM load, no unit-of-work flush).
    conn.execute(_UPDATE_DEVICE, {"_id": device.id, **values})
    running: dict[str, str] = {}
    for name, info in models.items():
        slot = info["active_slot"]
        active = info["slots"].get(slot) if slot else None
        if active is not None:
            running[name] = active["version"]
    _sync_device_models(conn, device, models, now)

    releases = current_app.extensions["edgepkg_releases"].get()
    service = rollout_service()
    proposed: list[dict[str, Any]] = []
    if service is not None:
        proposed = list(service.assignments_for_device(db, device, releases, now))
    assignments = safe_assignments(proposed, releases, running)
    db.commit()
    return jsonify(poll_interval=cfg.poll_interval, assignments=assignments)


_devices = cast(Table, Device.__table__)
_device_models = cast(Table, DeviceModel.__table__)
# SET columns come from the parameter names given at execution.
_UPDATE_DEVICE = _devices.update().where(_devices.c.id == bindparam("_id"))


def _sync_device_models(
    conn: Connection, device: DeviceRecord, models: dict[str, dict[str, Any]], now: dt.datetime
) -> None:
    """Write the per-model rows that changed (usually none) and update ``device.models``."""
    current = dict(device.models)
    dm = _device_models.c
    for name, info in models.items():
        slot = info["active_slot"]
        active = info["slots"].get(slot) if slot else None
        version = active["version"] if active else None
        sha = active["sha256"] if active else None
        row = current.pop(name, None)
        if row is None:
            # An upsert: two check-ins of a new device racing must not fail on the primary key.
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            fields = {"version": version, "sha256": sha, "active_slot": slot, "updated_at": now}
            conn.execute(
                insert(_device_models)
                .values(device_id=device.id, model=name, **fields)
                .on_conflict_do_update(index_elements=["device_id", "model"], set_=fields)
            )
        elif row != (version, sha, slot):
            conn.execute(
                _device_models.update()
                .where(dm.device_id == device.id, dm.model == name)
                .values(version=version, sha256=sha, active_slot=slot, updated_at=now)
            )
        device.models[name] = (version, sha, slot)
    for name in current:
        conn.execute(_device_models.delete().where(dm.device_id == device.id, dm.model == name))
        del device.models[name]


# --- events ----------------------------------------------------------------------------------


def _parse_event(raw: Any, index: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRequestError(f"events[{index}] must be an object")
    event_id = raw.get("id")
    if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
        raise BadRequestError(f"events[{index}].id must be a UUID string")
    try:
        uuid.UUID(event_id)
    except ValueError:
        raise BadRequestError(f"events[{index}].id must be a UUID string") from None
    etype = raw.get("type")
    if etype not in EVENT_TYPES:
        raise BadRequestError(
            f"events[{index}].type must be one of {', '.join(EVENT_TYPES)}", code="bad_event_type"
        )
    model = raw.get("model")
    if model is not None and (not isinstance(model, str) or not _NAME.match(model)):
        raise BadRequestError(f"events[{index}].model is invalid")
    version = raw.get("version")
    if version is not None and (not isinstance(version, str) or not _VERSION.match(version)):
        raise BadRequestError(f"events[{index}].version is invalid")
    rollout_id = raw.get("rollout_id")
    if rollout_id is not None and (
        not isinstance(rollout_id, str) or not _ROLLOUT_ID.match(rollout_id)
    ):
        raise BadRequestError(f"events[{index}].rollout_id is invalid")
    details = v.get_dict(raw, "details", required=False) or {}
    return {
        "id": str(uuid.UUID(event_id)),
        "type": etype,
        "time": v.parse_time(raw.get("time"), f"events[{index}].time"),
        "model": model,
        "version": version,
        "rollout_id": rollout_id,
        "details": details,
    }


@bp.post("/devices/<device_id>/events")
def post_events(device_id: str) -> ResponseReturnValue:
    db = get_session()
    cfg = _config()
    device = _signed_device(db, device_id)
    body = v.json_body(request)
    raw_events = body.get("events")
    if not isinstance(raw_events, list) or not raw_events:
        raise BadRequestError("'events' must be a non-empty list")
    if len(raw_events) > cfg.max_events_per_batch:
        raise BadRequestError(f"at most {cfg.max_events_per_batch} events per request")
    parsed: dict[str, dict[str, Any]] = {}
    for i, raw in enumerate(raw_events):
        e = _parse_event(raw, i)
        parsed.setdefault(e["id"], e)
    now = _now()
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    table = Event.__table__  # a Table
    accepted_ids: list[str] = []
    for e in parsed.values():
        stmt = (
            insert(table)  # type: ignore[arg-type]
            .values(device_id=device.id, received_at=now, **e)
            .on_conflict_do_nothing(index_elements=["device_id", "id"])
            .returning(table.c.seq)
        )
        if db.execute(stmt).first() is not None:
            accepted_ids.append(e["id"])
    duplicates = len(raw_events) - len(accepted_ids)
    if accepted_ids:
        new_events = list(
            db.scalars(
                select(Event)
                .where(Event.device_id == device.id, Event.id.in_(accepted_ids))
                .order_by(Event.time, Event.seq)
            )
        )
        service = rollout_service()
        if service is not None:
            service.on_device_events(db, device, new_events, now)
    db.connection().execute(_UPDATE_DEVICE, {"_id": device.id, "last_seen": now})
    db.commit()
    return jsonify(accepted=len(accepted_ids), duplicates=duplicates)


# --- rollout status --------------------------------------------------------------------------


@bp.get("/devices/<device_id>/rollouts/<rollout_id>")
def rollout_status(device_id: str, rollout_id: str) -> ResponseReturnValue:
    db = get_session()
    _signed_device(db, device_id)
    if not _ROLLOUT_ID.match(rollout_id):
        raise NotFoundError("no such rollout")
    service = rollout_service()
    status = service.rollout_status(db, rollout_id) if service is not None else None
    db.commit()
    if status is None:
        raise NotFoundError("no such rollout")
    return jsonify(rollout_id=rollout_id, status=status)
