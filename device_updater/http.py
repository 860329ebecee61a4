"""The device's HTTP client for the update server: every request after enrollment is signed.

Device auth (shared contract): headers ``X-Edgepkg-Device``, ``X-Edgepkg-Timestamp``,
``X-Edgepkg-Nonce`` and ``X-Edgepkg-Signature`` (base64 DER ECDSA-P256-SHA256 made by the
keystore, so the private key never leaves the token) over::

    "EDGEPKG-DEVICE-V1\\n" + METHOD + "\\n" + path_with_query + "\\n" + timestamp + "\\n"
    + nonce + "\\n" + sha256_hex(body)

Errors are split three ways: :class:`TransportError` (network down, timeout, server 5xx: retry
later, keep serving the current model), :class:`ServerRefusedError` (the server answered 4xx: the
request itself is wrong or not allowed) and :class:`BadResponseError` (the answer is malformed or
too large: untrusted input).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from device_updater import errors
from device_updater.errors import TransportError, UntrustedDeviceInputError

AUTH_DOMAIN = "EDGEPKG-DEVICE-V1"
MAX_RESPONSE_BYTES = 1 << 20  # JSON API answers are small; refuse anything bigger than 1 MiB
DEFAULT_TIMEOUT = (10.0, 30.0)  # (connect, read) seconds


__all__ = [
    "Assignment", "BadResponseError", "CheckinResponse", "DeviceAuth", "DeviceClient",
    "EnrollResult", "ServerRefusedError", "TransportError", "enroll", "signing_string",
]


class ServerRefusedError(errors.ServerRefusedError):
    """The server answered with a 4xx error; ``status`` and ``code`` say why."""

    def __init__(self, message: str, *, status: int, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class BadResponseError(UntrustedDeviceInputError):
    """The server's answer is malformed, of the wrong shape, or too large."""


def signing_string(method: str, path_with_query: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """The exact bytes a device signs for one request (pure)."""
    digest = hashlib.sha256(body).hexdigest()
    text = f"{AUTH_DOMAIN}\n{method.upper()}\n{path_with_query}\n{timestamp}\n{nonce}\n{digest}"
    return text.encode("utf-8")


def path_with_query(url: str) -> str:
    """The request target a server sees: path plus ``?query`` when there is one."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


class DeviceAuth:
    """Makes the signed headers for one request; ``sign`` is the keystore's ``sign``."""

    def __init__(
        self,
        device_id: str,
        sign: Callable[[bytes], bytes],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self._sign = sign
        self._clock = clock

    def headers(self, method: str, url: str, body: bytes = b"") -> dict[str, str]:
        timestamp = int(self._clock())
        nonce = secrets.token_hex(16)
        signature = self._sign(signing_string(method, path_with_query(url), timestamp, nonce, body))
        return {
            "X-Edgepkg-Device": self.device_id,
            "X-Edgepkg-Timestamp": str(timestamp),
            "X-Edgepkg-Nonce": nonce,
            "X-Edgepkg-Signature": base64.b64encode(signature).decode("ascii"),
        }


@dataclass(frozen=True)
class Assignment:
    """What the server asks this device to install (validated shape, still untrusted content)."""

    model: str
    version: str
    target: str
    delta_target: str | None
    rollout_id: str | None
    allow_downgrade: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": "install",
            "model": self.model,
            "version": self.version,
            "target": self.target,
            "delta_target": self.delta_target,
            "rollout_id": self.rollout_id,
            "allow_downgrade": self.allow_downgrade,
        }


@dataclass(frozen=True)
class CheckinResponse:
    poll_interval: int
    assignments: list[Assignment]


@dataclass(frozen=True)
class EnrollResult:
    device_id: str
    poll_interval: int


def _join(base: str, path: str) -> str:
    return base.rstrip("/") + path


def _read_limited(resp: requests.Response, limit: int) -> bytes:
    declared = resp.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        resp.close()
        raise BadResponseError(f"server answer of {declared} bytes exceeds the {limit}-byte limit")
    out = bytearray()
    try:
        for chunk in resp.iter_content(64 * 1024):
            out += chunk
            if len(out) > limit:
                raise BadResponseError(f"server answer exceeds the {limit}-byte limit")
    except requests.RequestException as exc:
        raise TransportError(f"connection lost while reading the server's answer: {exc}") from exc
    finally:
        resp.close()
    return bytes(out)


def _request(
    session: requests.Session,
    method: str,
    url: str,
    *,
    payload: Mapping[str, Any] | None,
    auth: DeviceAuth | None,
    timeout: tuple[float, float],
) -> Any:
    body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Accept": "application/json"}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    if auth is not None:
        headers.update(auth.headers(method, url, body))
    try:
        resp = session.request(
            method, url, data=body if payload is not None else None, headers=headers,
            timeout=timeout, stream=True, allow_redirects=False,
        )
    except requests.Timeout as exc:
        raise TransportError(f"{method} {url}: timed out") from exc
    except requests.RequestException as exc:
        raise TransportError(f"{method} {url}: cannot reach the server ({exc.__class__.__name__})") from exc
    data = _read_limited(resp, MAX_RESPONSE_BYTES)
    status = resp.status_code
    if status >= 500 or status == 429:
        raise TransportError(f"{method} {url}: server error {status}")
    if status >= 400:
        code, message = "", data[:200].decode("utf-8", "replace")
        try:
            err = json.loads(data).get("error", {})
            code, message = str(err.get("code", "")), str(err.get("message", message))
        except (ValueError, AttributeError):
            pass
        raise ServerRefusedError(f"{method} {url}: server refused ({status}): {message}",
                                 status=status, code=code)
    if status >= 300:
        raise BadResponseError(f"{method} {url}: unexpected redirect {status}")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise BadResponseError(f"{method} {url}: answer is not JSON") from exc


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise BadResponseError(f"server answer is malformed: {what}")


def _poll_interval(value: Any) -> int:
    _expect(isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 7 * 86400,
            "poll_interval must be an integer number of seconds between 1 and 604800")
    return int(value)


def _opt_str(value: Any, what: str, max_len: int = 512) -> str | None:
    if value is None:
        return None
    _expect(isinstance(value, str) and 0 < len(value) <= max_len, what)
    return str(value)


def parse_assignment(raw: Any) -> Assignment:
    """Check the shape of one assignment (pure). Content is still checked against TUF later."""
    _expect(isinstance(raw, dict), "assignment is not an object")
    _expect(raw.get("action") == "install", "assignment action is not 'install'")
    model = _opt_str(raw.get("model"), "assignment model", 128)
    version = _opt_str(raw.get("version"), "assignment version", 64)
    target = _opt_str(raw.get("target"), "assignment target")
    _expect(model is not None and version is not None and target is not None,
            "assignment needs model, version and target")
    allow = raw.get("allow_downgrade", False)
    _expect(isinstance(allow, bool), "allow_downgrade must be a boolean")
    assert model is not None and version is not None and target is not None
    return Assignment(
        model=model, version=version, target=target,
        delta_target=_opt_str(raw.get("delta_target"), "assignment delta_target"),
        rollout_id=_opt_str(raw.get("rollout_id"), "assignment rollout_id", 128),
        allow_downgrade=allow,
    )


def enroll(
    server_url: str,
    enrollment_token: str,
    public_key_pem: str,
    facts: Mapping[str, Any],
    tags: Sequence[str] = (),
    *,
    session: requests.Session | None = None,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
) -> EnrollResult:
    """Register this device's public key with the server using a one-time enrollment token."""
    answer = _request(
        session or requests.Session(), "POST", _join(server_url, "/api/v1/enroll"),
        payload={"enrollment_token": enrollment_token, "public_key_pem": public_key_pem,
                 "facts": dict(facts), "tags": list(tags)},
        auth=None, timeout=timeout,
    )
    _expect(isinstance(answer, dict), "enroll answer is not an object")
    device_id = answer.get("device_id")
    _expect(isinstance(device_id, str) and len(device_id) == 64, "device_id is not a key id")
    return EnrollResult(device_id=str(device_id), poll_interval=_poll_interval(answer.get("poll_interval", 300)))


class DeviceClient:
    """Signed client for the device endpoints of the update server."""

    def __init__(
        self,
        server_url: str,
        auth: DeviceAuth,
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.auth = auth
        self.session = session or requests.Session()
        self.timeout = timeout
        self.requests_made = 0

    def _call(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        self.requests_made += 1
        return _request(self.session, method, _join(self.server_url, path), payload=payload,
                        auth=self.auth, timeout=self.timeout)

    @property
    def _base(self) -> str:
        return f"/api/v1/devices/{self.auth.device_id}"

    def checkin(self, report: Mapping[str, Any]) -> CheckinResponse:
        answer = self._call("POST", f"{self._base}/checkin", report)
        _expect(isinstance(answer, dict), "check-in answer is not an object")
        raw = answer.get("assignments", [])
        _expect(isinstance(raw, list) and len(raw) <= 64, "assignments must be a list (at most 64)")
        return CheckinResponse(
            poll_interval=_poll_interval(answer.get("poll_interval", 300)),
            assignments=[parse_assignment(a) for a in raw],
        )

    def post_events(self, events: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
        answer = self._call("POST", f"{self._base}/events", {"events": list(events)})
        _expect(isinstance(answer, dict), "events answer is not an object")
        accepted, duplicates = answer.get("accepted", 0), answer.get("duplicates", 0)
        _expect(isinstance(accepted, int) and isinstance(duplicates, int), "accepted/duplicates")
        return int(accepted), int(duplicates)

    def rollout_status(self, rollout_id: str) -> str:
        answer = self._call("GET", f"{self._base}/rollouts/{quote(rollout_id, safe='')}")
        _expect(isinstance(answer, dict), "rollout answer is not an object")
        status = answer.get("status")
        _expect(status in ("running", "paused", "aborted", "completed"), "unknown rollout status")
        return str(status)
