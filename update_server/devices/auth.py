"""Signed device requests: the server's check of a request signed as :mod:`edgepkg.protocol`
says (:func:`~edgepkg.protocol.signing_string` and the ``X-Edgepkg-*`` headers). The server
refuses a timestamp outside the window, a nonce seen before for that device, an unknown or
disabled device and any signature that does not verify. No reusable secret sits on the device.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import random
import threading
import time
from typing import Any, cast

from flask import Request, g
from sqlalchemy import Connection, Table, bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from edgepkg.protocol import (
    DEVICE_ID_RE,
    HEADER_DEVICE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MAX_SIGNATURE_B64,
    NONCE_RE,
    TIMESTAMP_RE,
    signing_string,
)
from update_server._crypto import verify_device_signature
from update_server.devices.models import DEVICE_ENABLED, Device, DeviceModel, Nonce
from update_server.errors import ForbiddenError, UnauthorizedError

PURGE_EVERY_S = 60.0


def check_timestamp(timestamp: str, now: dt.datetime, window_s: int) -> None:
    """Raise UnauthorizedError unless ``timestamp`` is unix seconds within ±window of now."""
    if not TIMESTAMP_RE.match(timestamp):
        raise UnauthorizedError("X-Edgepkg-Timestamp must be unix seconds", code="bad_timestamp")
    skew = abs(int(timestamp) - now.timestamp())
    if skew > window_s:
        raise UnauthorizedError(
            f"request timestamp is {int(skew)} s away from server time (window ±{window_s} s); "
            "check the device clock",
            code="bad_timestamp",
        )


def request_path_with_query(request: Request) -> str:
    """The path as signed: script root + path, plus ``?query`` when there is one."""
    path = request.root_path + request.path
    qs = request.query_string.decode("latin-1")
    return f"{path}?{qs}" if qs else path


@dataclasses.dataclass(slots=True)
class DeviceRecord:
    """What a signed device request needs of its device row, read with one statement.

    Duck-types the parts of :class:`~update_server.devices.models.Device` the device endpoints
    and the rollout service use (``id``, ``tags``, ``status``/``enabled``, ``last_checkin``,
    ``active_versions()``), without an ORM object, its identity map or its flush.
    ``models`` maps model name -> (version, sha256, active_slot) as stored.
    """

    id: str
    status: str
    tags: list[str]
    models: dict[str, tuple[str | None, str | None, str | None]]
    last_checkin: dict[str, Any] | None = None
    # The device's reported facts: dynamic groups (rollout "group" targets) select on them.
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.status == DEVICE_ENABLED

    def active_versions(self) -> dict[str, str]:
        return {name: m[0] for name, m in self.models.items() if m[0] is not None}


DeviceLike = Device | DeviceRecord
"""A device row (ORM) or the lean record a signed request loads: both have ``id``, ``tags``,
``enabled``, ``last_checkin`` and ``active_versions()``, which is all the services use."""

_devices = cast(Table, Device.__table__)
_device_models = cast(Table, DeviceModel.__table__)
_nonces = cast(Table, Nonce.__table__)

_SELECT_DEVICE = (
    select(
        _devices.c.public_key_pem,
        _devices.c.status,
        _devices.c.tags,
        _devices.c.facts,
        _device_models.c.model,
        _device_models.c.version,
        _device_models.c.sha256,
        _device_models.c.active_slot,
    )
    .select_from(_devices.outerjoin(_device_models, _device_models.c.device_id == _devices.c.id))
    .where(_devices.c.id == bindparam("device_id"))
)

# Built once: INSERT ... ON CONFLICT (device_id, nonce) DO NOTHING RETURNING nonce, per dialect.
_NONCE_INSERT = tuple(
    ins(_nonces)
    .on_conflict_do_nothing(index_elements=["device_id", "nonce"])
    .returning(_nonces.c.nonce)
    for ins in (sqlite_insert, pg_insert)
)

_purge_lock = threading.Lock()
_next_purge: list[float] = [0.0]


def load_device(conn: Connection, device_id: str) -> tuple[str, DeviceRecord] | None:
    """(public key PEM, record) of a device with its per-model rows, in one statement."""
    rows = conn.execute(_SELECT_DEVICE, {"device_id": device_id}).all()
    if not rows:
        return None
    pem, status, tags, facts = rows[0][0], rows[0][1], rows[0][2], rows[0][3]
    models = {r[4]: (r[5], r[6], r[7]) for r in rows if r[4] is not None}
    return pem, DeviceRecord(
        id=device_id, status=status, tags=list(tags or ()), models=models,
        facts=dict(facts) if isinstance(facts, dict) else {},
    )


def authenticate_device(
    session: Session, request: Request, now: dt.datetime, window_s: int
) -> DeviceRecord:
    """Return the enabled device that signed ``request``; raise Unauthorized/Forbidden.

    Costs one SELECT (device + its model rows) and one INSERT (the nonce) in the session's
    transaction; the caller commits (or the request's rollback un-burns the nonce).
    """
    headers = request.headers
    device_id = headers.get(HEADER_DEVICE, "")
    timestamp = headers.get(HEADER_TIMESTAMP, "")
    nonce = headers.get(HEADER_NONCE, "")
    signature_b64 = headers.get(HEADER_SIGNATURE, "")
    if not (device_id and timestamp and nonce and signature_b64):
        raise UnauthorizedError(
            "device request is not signed (X-Edgepkg-Device/-Timestamp/-Nonce/-Signature)",
            code="unsigned",
        )
    if not DEVICE_ID_RE.match(device_id):
        raise UnauthorizedError("X-Edgepkg-Device must be 64 lowercase hex", code="unknown_device")
    if not NONCE_RE.match(nonce):
        raise UnauthorizedError("X-Edgepkg-Nonce must be 32 lowercase hex", code="bad_nonce")
    if len(signature_b64) > MAX_SIGNATURE_B64:
        raise UnauthorizedError("X-Edgepkg-Signature is too long", code="bad_signature")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise UnauthorizedError("X-Edgepkg-Signature is not base64", code="bad_signature") from None
    check_timestamp(timestamp, now, window_s)
    conn = session.connection()
    loaded = load_device(conn, device_id)
    if loaded is None:
        raise UnauthorizedError("unknown device; enroll first", code="unknown_device")
    pem, device = loaded
    message = signing_string(
        request.method, request_path_with_query(request), timestamp, nonce, request.get_data()
    )
    verify_device_signature(pem, signature, message)
    # From here the request is genuinely the device's: its nonce must be burned even if the
    # request ends in a 4xx (the rollback of that request would un-burn it otherwise).
    g._edgepkg_device_nonce = (device_id, nonce, now, window_s)
    _record_nonce(conn, device_id, nonce, now, window_s)  # a replay is refused as a replay
    if not device.enabled:
        raise ForbiddenError("this device is disabled by an operator", code="device_disabled")
    return device


def _record_nonce(
    conn: Connection, device_id: str, nonce: str, now: dt.datetime, window_s: int
) -> None:
    """One INSERT ... ON CONFLICT DO NOTHING: no row inserted means the nonce was used."""
    expires = now + dt.timedelta(seconds=2 * window_s + 1)
    _maybe_purge(conn, now)
    res = conn.execute(
        _NONCE_INSERT[conn.dialect.name == "postgresql"],
        {"device_id": device_id, "nonce": nonce, "expires_at": expires},
    )
    if res.first() is None:
        raise UnauthorizedError("nonce already used: replayed request", code="replay")


def burn_nonce_after_error(session: Session, status: int) -> None:
    """After a 4xx/5xx answer to a request whose signature verified: roll back what the request
    did and commit its nonce alone, so the same signed request cannot be replayed."""
    pending = g.pop("_edgepkg_device_nonce", None)
    if pending is None or status < 400:
        return
    device_id, nonce, now, window_s = pending
    session.rollback()
    conn = session.connection()
    expires = now + dt.timedelta(seconds=2 * window_s + 1)
    conn.execute(
        _NONCE_INSERT[conn.dialect.name == "postgresql"],
        {"device_id": device_id, "nonce": nonce, "expires_at": expires},
    )
    session.commit()


def _maybe_purge(conn: Connection, now: dt.datetime) -> None:
    """Delete expired nonces in bulk, at most once per ``PURGE_EVERY_S`` per process
    (housekeeping, not security: an expired nonce is refused by the timestamp window)."""
    t = time.monotonic()
    with _purge_lock:
        if t < _next_purge[0]:
            return
        _next_purge[0] = t + PURGE_EVERY_S * random.uniform(0.5, 1.5)
    conn.execute(delete(_nonces).where(_nonces.c.expires_at < now))


def require_own_device(device: DeviceRecord, device_id: str) -> None:
    """A device may touch only its own records."""
    if device.id != device_id:
        raise ForbiddenError("a device may only access its own records", code="not_your_device")
