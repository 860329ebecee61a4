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
from device_updater._deadline import deadline, watch_session
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


def request_deadline(timeout: tuple[float, float]) -> float:
    """Seconds one whole API call may take: the read timeout bounds each socket read only, and a
    server trickling its answer would otherwise hold the update cycle forever."""
    return timeout[0] + 2 * timeout[1]


__all__ = [
    "BadResponseError", "DeviceAuth", "DeviceClient", "RateLimitedError", "ServerRefusedError",
    "TransportError", "enroll", "retry_after_seconds",
]


class ServerRefusedError(errors.ServerRefusedError):
    """The server answered with a 4xx error; ``status`` and ``code`` say why."""

    def __init__(self, message: str, *, status: int, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RateLimitedError(TransportError):
    """The server said 429 (a quota or throttle): keep the data queued and retry after
    ``retry_after_s`` seconds (from ``Retry-After``, clamped to 1 s .. 1 h)."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


MAX_RETRY_AFTER_S = 3600.0  # a hostile server must not silence the device for longer
DEFAULT_RETRY_AFTER_S = 60.0


def retry_after_seconds(value: str | None) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds; anything else: 60 s)."""
    text = (value or "").strip()
    if not text.isdigit() or len(text) > 9:
        return DEFAULT_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(1.0, float(text)))


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
    limit = request_deadline(timeout)
    with deadline(limit) as watch:
        try:
            resp = session.request(
                method, url, data=body if payload is not None else None, headers=headers,
                timeout=timeout, stream=True, allow_redirects=False,
            )
            data = _read_limited(resp, MAX_RESPONSE_BYTES)
            if watch.fired:  # the answer was cut by the deadline, not complete
                raise TransportError(f"{method} {url}: answer cut at the deadline")
        except (requests.RequestException, TransportError) as exc:
            if watch.fired:
                raise TransportError(
                    f"{method} {url}: no complete answer within {limit:.0f} s") from exc
            if isinstance(exc, TransportError):
                raise
            raise TransportError(f"{method} {url}: {describe_transport_error(exc)}") from exc
    status = resp.status_code
    if status == 429:
        wait = retry_after_seconds(resp.headers.get("Retry-After"))
        raise RateLimitedError(f"{method} {url}: server asks to slow down; retry in {wait:.0f} s",
                               retry_after_s=wait)
    if status >= 500:
        raise TransportError(f"{method} {url}: server error (HTTP {status}{_reason(resp)})")
    if status >= 400:
        code, message = "", data[:200].decode("utf-8", "replace")
        try:
            err = json.loads(data).get("error", {})
            code, message = str(err.get("code", "")), str(err.get("message", message))
        except (ValueError, AttributeError, RecursionError):
            pass
        raise ServerRefusedError(f"{method} {url}: server refused ({status}): {message}",
                                 status=status, code=code)
    if status >= 300:
        raise BadResponseError(f"{method} {url}: unexpected redirect {status}")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise BadResponseError(f"{method} {url}: answer is not JSON") from exc
    except RecursionError as exc:  # 1 MiB of "[" is valid-looking JSON nested past the stack
        raise BadResponseError(f"{method} {url}: answer is nested too deeply") from exc


def describe_transport_error(exc: requests.RequestException) -> str:
    """Why the server could not be reached, in words an operator can act on (the class name
    alone, e.g. ``ConnectionError``, does not tell a refused port from a DNS or TLS failure)."""
    # The order matters: ConnectTimeout is also a ConnectionError, SSLError too.
    if isinstance(exc, requests.exceptions.SSLError):
        what = "TLS handshake failed (certificate or protocol problem)"
    elif isinstance(exc, requests.exceptions.ConnectTimeout):
        what = "timed out connecting to the server"
    elif isinstance(exc, requests.Timeout):
        what = "timed out waiting for the server's answer"
    elif isinstance(exc, requests.ConnectionError):
        text = str(exc).lower()
        if "refused" in text:
            what = "connection refused (is the server running, is the URL's port right?)"
        elif "name or service not known" in text or "resolve" in text or "nodename" in text:
            what = "the server's host name does not resolve"
        elif "unreachable" in text:
            what = "network unreachable"
        else:
            what = "cannot reach the server (connection failed)"
    else:
        what = "cannot reach the server"
    return f"{what} [{exc.__class__.__name__}]"


def _reason(resp: requests.Response) -> str:
    return f" {resp.reason}" if resp.reason else ""


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
        watch_session(session or requests.Session()), "POST",
        _join(server_url, "/api/v1/enroll"),
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.auth = auth
        self.session = watch_session(session or requests.Session())
        self.timeout = timeout
        self.requests_made = 0
        self._clock = clock
        # Per endpoint: after a 429 the endpoint stays quiet until then (the callers keep their
        # queue: a RateLimitedError is a TransportError), so a quota on events does not stop
        # check-ins and the device does not hammer a server that asked it to wait.
        self._quiet_until: dict[str, float] = {}

    def _call(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        now = self._clock()
        until = self._quiet_until.get(path, 0.0)
        if now < until:
            raise RateLimitedError(f"{method} {path}: waiting {until - now:.0f} s more, as the "
                                   "server asked (Retry-After)", retry_after_s=until - now)
        self.requests_made += 1
        try:
            return _request(self.session, method, _join(self.server_url, path), payload=payload,
                            auth=self.auth, timeout=self.timeout)
        except RateLimitedError as exc:
            self._quiet_until[path] = now + exc.retry_after_s
            raise

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
        the server's quota: keep the report, wait ``retry_after_s``), :class:`TransportError`
        when offline, :class:`ServerRefusedError` when the server refuses the report."""
        answer = self._call("POST", f"{self._base}/telemetry", report.to_json())
        if not (isinstance(answer, dict) and answer.get("accepted") is True
                and isinstance(answer.get("duplicate", False), bool)):
            raise BadResponseError("the telemetry answer is malformed (expected "
                                   '{"accepted": true, "duplicate": bool})')
        return not answer.get("duplicate", False)
