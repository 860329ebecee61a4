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
import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import requests

from device_updater import errors
from device_updater.errors import TransportError, UntrustedDeviceInputError
from edgepkg.errors import ProtocolError
from edgepkg.protocol import (
    HEADER_DEVICE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    CheckinResponse,
    EnrollResult,
    TelemetryReport,
    parse_checkin_response,
    parse_enroll_response,
    parse_events_ack,
    parse_rollout_status,
    path_with_query,
    signing_string,
)

MAX_RESPONSE_BYTES = 1 << 20  # JSON API answers are small; refuse anything bigger than 1 MiB
DEFAULT_TIMEOUT = (10.0, 30.0)  # (connect, read) seconds


__all__ = [
    "BadResponseError", "DeviceAuth", "DeviceClient", "RateLimitedError", "ServerRefusedError",
    "TransportError", "enroll",
]


class ServerRefusedError(errors.ServerRefusedError):
    """The server answered with a 4xx error; ``status`` and ``code`` say why."""

    def __init__(self, message: str, *, status: int, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RateLimitedError(TransportError):
    """The server answered 429: try again after ``retry_after`` seconds (its Retry-After)."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(resp: requests.Response, default: float = 60.0) -> float:
    raw = resp.headers.get("Retry-After", "")
    # Seconds only (an HTTP date is legal too, but our server sends seconds); capped at a day
    # so that a hostile answer cannot silence the device for ever.
    return min(86400.0, float(raw)) if raw.isdigit() else default


class BadResponseError(UntrustedDeviceInputError):
    """The server's answer is malformed, of the wrong shape, or too large."""


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
            HEADER_DEVICE: self.device_id,
            HEADER_TIMESTAMP: str(timestamp),
            HEADER_NONCE: nonce,
            HEADER_SIGNATURE: base64.b64encode(signature).decode("ascii"),
        }


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
        raise TransportError(
            f"{method} {url}: cannot reach the server ({exc.__class__.__name__})") from exc
    data = _read_limited(resp, MAX_RESPONSE_BYTES)
    status = resp.status_code
    if status == 429:
        raise RateLimitedError(f"{method} {url}: server busy (429)",
                               retry_after=_retry_after(resp))
    if status >= 500:
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


@contextmanager
def _parsing(what: str) -> Iterator[None]:
    """The server's answers are untrusted: a contract violation is the device's
    :class:`BadResponseError` (the protocol's parsers raise :class:`ProtocolError`)."""
    try:
        yield
    except ProtocolError as exc:
        raise BadResponseError(f"{what} is malformed: {exc}") from exc


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
    with _parsing("the enroll answer"):
        return parse_enroll_response(answer)


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
        with _parsing("the check-in answer"):
            return parse_checkin_response(answer)

    def post_events(self, events: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
        answer = self._call("POST", f"{self._base}/events", {"events": list(events)})
        with _parsing("the events answer"):
            ack = parse_events_ack(answer)
        return ack.accepted, ack.duplicates

    def rollout_status(self, rollout_id: str) -> str:
        answer = self._call("GET", f"{self._base}/rollouts/{quote(rollout_id, safe='')}")
        with _parsing("the rollout answer"):
            return parse_rollout_status(answer)

    def post_telemetry(self, report: TelemetryReport) -> bool:
        """Send one report; True when the server stored it now, False when it already had
        this seq (a resend after a lost answer). Raises :class:`RateLimitedError` on 429 (over
        the server's quota: keep the report, wait ``retry_after``), :class:`TransportError`
        when offline, :class:`ServerRefusedError` when the server refuses the report."""
        answer = self._call("POST", f"{self._base}/telemetry", report.to_json())
        if not (isinstance(answer, dict) and answer.get("accepted") is True
                and isinstance(answer.get("duplicate", False), bool)):
            raise BadResponseError("the telemetry answer is malformed (expected "
                                   '{"accepted": true, "duplicate": bool})')
        return not answer.get("duplicate", False)
