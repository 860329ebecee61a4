"""Signed device requests: the canonical string (pure) and the request check (I/O).

A device signs, with the P-256 key that identifies it, the UTF-8 string::

    "EDGEPKG-DEVICE-V1\\n" + METHOD + "\\n" + path_with_query + "\\n" + timestamp + "\\n"
    + nonce + "\\n" + sha256_hex(body)

and sends ``X-Edgepkg-Device``, ``X-Edgepkg-Timestamp`` (unix seconds), ``X-Edgepkg-Nonce``
(32 hex) and ``X-Edgepkg-Signature`` (base64 DER ECDSA-P256-SHA256). The server refuses a
timestamp outside the window, a nonce seen before for that device, an unknown or disabled device
and any signature that does not verify. No reusable secret sits on the device.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import random
import re

from flask import Request
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from update_server._crypto import verify_device_signature
from update_server.errors import ForbiddenError, UnauthorizedError
from update_server.models import Device, Nonce

PREFIX = "EDGEPKG-DEVICE-V1"
HEADER_DEVICE = "X-Edgepkg-Device"
HEADER_TIMESTAMP = "X-Edgepkg-Timestamp"
HEADER_NONCE = "X-Edgepkg-Nonce"
HEADER_SIGNATURE = "X-Edgepkg-Signature"

_DEVICE_ID = re.compile(r"^[0-9a-f]{64}$")
_NONCE = re.compile(r"^[0-9a-f]{32}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_MAX_SIGNATURE_B64 = 200
_PURGE_PROBABILITY = 0.01


def canonical_request(
    method: str, path_with_query: str, timestamp: str, nonce: str, body: bytes
) -> bytes:
    """The exact bytes a device signs."""
    body_hash = hashlib.sha256(body).hexdigest()
    text = "\n".join((PREFIX, method.upper(), path_with_query, timestamp, nonce, body_hash))
    return text.encode("utf-8")


def check_timestamp(timestamp: str, now: dt.datetime, window_s: int) -> None:
    """Raise UnauthorizedError unless ``timestamp`` is unix seconds within ±window of now."""
    if not _TIMESTAMP.match(timestamp):
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


def authenticate_device(
    session: Session, request: Request, now: dt.datetime, window_s: int
) -> Device:
    """Return the enabled device that signed ``request``; raise Unauthorized/Forbidden."""
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
    if not _DEVICE_ID.match(device_id):
        raise UnauthorizedError("X-Edgepkg-Device must be 64 lowercase hex", code="unknown_device")
    if not _NONCE.match(nonce):
        raise UnauthorizedError("X-Edgepkg-Nonce must be 32 lowercase hex", code="bad_nonce")
    if len(signature_b64) > _MAX_SIGNATURE_B64:
        raise UnauthorizedError("X-Edgepkg-Signature is too long", code="bad_signature")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise UnauthorizedError("X-Edgepkg-Signature is not base64", code="bad_signature") from None
    check_timestamp(timestamp, now, window_s)
    device = session.get(Device, device_id)
    if device is None:
        raise UnauthorizedError("unknown device; enroll first", code="unknown_device")
    message = canonical_request(
        request.method, request_path_with_query(request), timestamp, nonce, request.get_data()
    )
    verify_device_signature(device.public_key_pem, signature, message)
    if not device.enabled:
        raise ForbiddenError("this device is disabled by an operator", code="device_disabled")
    _record_nonce(session, device_id, nonce, now, window_s)
    return device


def _record_nonce(
    session: Session, device_id: str, nonce: str, now: dt.datetime, window_s: int
) -> None:
    expires = now + dt.timedelta(seconds=2 * window_s + 1)
    if random.random() < _PURGE_PROBABILITY:  # housekeeping, not security
        session.execute(delete(Nonce).where(Nonce.expires_at < now))
    session.add(Nonce(device_id=device_id, nonce=nonce, expires_at=expires))
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise UnauthorizedError("nonce already used: replayed request", code="replay") from None


def require_own_device(device: Device, device_id: str) -> None:
    """A device may touch only its own records."""
    if device.id != device_id:
        raise ForbiddenError("a device may only access its own records", code="not_your_device")
