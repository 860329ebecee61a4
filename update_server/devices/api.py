"""Device-facing API: enrollment, signed check-ins, events, rollout status."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any, cast

from flask import Blueprint, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Connection, Table, bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from edgepkg.protocol import (
    ROLLOUT_ID_RE,
    CheckinResponse,
    EnrollResult,
    Event as ProtocolEvent,
    EventsAck,
    ModelReport,
    parse_event,
    parse_health_report,
    parse_models_report,
)
from update_server import _validate as v
from update_server._crypto import parse_device_public_key
from update_server.config import ServerConfig
from update_server.db import get_session
from update_server.devices import quotas
from update_server.devices.assignments import safe_assignments
from update_server.devices.auth import (
    DeviceRecord,
    authenticate_device,
    burn_nonce_after_error,
    require_own_device,
)
from update_server.devices.models import Device, DeviceModel, Event
from update_server.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    UnauthorizedError,
)
from update_server.grants.service import with_grants
from update_server.operators.auth import consume_enrollment_token, hash_token
from update_server.operators.models import EnrollmentToken
from update_server.rollouts import device_path as rollouts
from update_server.services import services

bp = Blueprint("devices_api", __name__, url_prefix="/api/v1")
log = logging.getLogger(__name__)


@bp.after_request
def _burn_nonce_on_error(response: Response) -> Response:
    if response.status_code >= 400 and "_edgepkg_device_nonce" in g:
        try:
            burn_nonce_after_error(get_session(), response.status_code)
        except SQLAlchemyError:
            # The database that failed the request may fail this too; the answer stands (the
            # request's effects were rolled back) and the timestamp window still bounds replay.
            log.warning("could not record the nonce of a refused device request", exc_info=True)
    return response


def _config() -> ServerConfig:
    return services().config


def _now() -> dt.datetime:
    return services().now()


def _event_row(e: ProtocolEvent) -> dict[str, Any]:
    """The ``events`` table columns of a parsed event (the device id is added by the caller)."""
    return {"id": e.id, "type": e.type, "time": e.time, "model": e.model, "version": e.version,
            "rollout_id": e.rollout_id, "details": e.details}


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
    device_id = parse_device_public_key(pem)
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
            return jsonify(EnrollResult(device_id, cfg.poll_interval).to_json()), 200
        if row is None or row.revoked or (row.expires_at is not None and row.expires_at <= now):
            # The same answer as for an unknown key, or a bad token would tell whether a
            # public key is enrolled (a 409 here and a 401 there was that oracle).
            raise UnauthorizedError("enrollment token is not valid", code="bad_enrollment_token")
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
    return jsonify(EnrollResult(device_id, cfg.poll_interval).to_json()), 201


# --- check-in --------------------------------------------------------------------------------


@bp.post("/devices/<device_id>/checkin")
def checkin(device_id: str) -> ResponseReturnValue:
    db = get_session()
    cfg = _config()
    device = _signed_device(db, device_id)
    body = v.json_body(request)
    models = parse_models_report(body.get("models"), cfg.max_models_per_checkin)
    state = v.get_str(body, "state", required=False, max_len=32, nullable=True)
    health = parse_health_report(body.get("health"))
    free_disk = v.get_int(body, "free_disk_bytes", required=False, minimum=0, nullable=True)
    last_error = v.get_str(body, "last_error", required=False, max_len=4096, nullable=True)
    facts = v.get_dict(body, "facts", required=False)
    now = _now()

    device.last_checkin = {
        "time": now.isoformat(),
        "models": {name: m.to_json() for name, m in models.items()},
        "state": state,
        "health": health.to_json() if body.get("health") is not None else {},
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
        device.facts = facts  # this check-in's assignments see the facts it just reported
    conn = db.connection()
    # One UPDATE of the device row (Core: no ORM load, no unit-of-work flush).
    conn.execute(_UPDATE_DEVICE, {"_id": device.id, **values})
    running = {name: m.active.version for name, m in models.items() if m.active is not None}
    _sync_device_models(conn, device, models, now)

    releases = services().current_releases()
    proposed = rollouts.assignments_for_device(db, device, releases, now)
    assignments = safe_assignments(proposed, releases, running)
    assignments = with_grants(current_app, db, device, assignments, releases, now)
    db.commit()
    answer = CheckinResponse(poll_interval=cfg.poll_interval, assignments=assignments)
    return jsonify(answer.to_json())


_devices = cast(Table, Device.__table__)
_device_models = cast(Table, DeviceModel.__table__)
# SET columns come from the parameter names given at execution.
_UPDATE_DEVICE = _devices.update().where(_devices.c.id == bindparam("_id"))


def _sync_device_models(
    conn: Connection, device: DeviceRecord, models: Mapping[str, ModelReport], now: dt.datetime
) -> None:
    """Write the per-model rows that changed (usually none) and update ``device.models``."""
    current = dict(device.models)
    dm = _device_models.c
    for name, info in models.items():
        slot = info.active_slot
        active = info.active
        version = active.version if active else None
        sha = active.sha256 if active else None
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
    parsed: dict[str, ProtocolEvent] = {}
    for i, raw in enumerate(raw_events):
        e = parse_event(raw, i)
        parsed.setdefault(e.id, e)
    now = _now()
    # Counted before anything is stored: a refused batch (429) leaves no rows behind.
    quotas.charge(
        db.connection(), device.id, "events", count=len(raw_events),
        nbytes=len(request.get_data()), now=now, quota=quotas.quota_for(cfg, "events"),
    )
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    table = Event.__table__  # a Table
    accepted_ids: list[str] = []
    for e in parsed.values():
        stmt = (
            insert(table)  # type: ignore[arg-type]
            .values(device_id=device.id, received_at=now, **_event_row(e))
            .on_conflict_do_nothing(index_elements=["device_id", "id"])
            .returning(table.c.seq)
        )
        if db.execute(stmt).first() is not None:
            accepted_ids.append(e.id)
    duplicates = len(raw_events) - len(accepted_ids)
    if accepted_ids:
        new_events = list(
            db.scalars(
                select(Event)
                .where(Event.device_id == device.id, Event.id.in_(accepted_ids))
                .order_by(Event.time, Event.seq)
            )
        )
        rollouts.on_device_events(db, device, new_events, now)
    db.connection().execute(_UPDATE_DEVICE, {"_id": device.id, "last_seen": now})
    db.commit()
    return jsonify(EventsAck(accepted=len(accepted_ids), duplicates=duplicates).to_json())


# --- rollout status --------------------------------------------------------------------------


@bp.get("/devices/<device_id>/rollouts/<rollout_id>")
def rollout_status(device_id: str, rollout_id: str) -> ResponseReturnValue:
    db = get_session()
    _signed_device(db, device_id)
    if not ROLLOUT_ID_RE.match(rollout_id):
        raise NotFoundError("no such rollout")
    status = rollouts.rollout_status(db, rollout_id)
    db.commit()
    if status is None:
        raise NotFoundError("no such rollout")
    return jsonify(rollout_id=rollout_id, status=status)
