"""The JSON messages between device and server, as typed values with strict parsers.

Each parser takes decoded, untrusted JSON and returns a value or raises
:class:`~edgepkg.errors.ProtocolError` naming the field; each value has ``to_json()`` giving
exactly what goes on the wire. The device parses the server's answers with these, the server
parses the device's reports with these, and the tests build both from these.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edgepkg.errors import ProtocolError
from edgepkg.protocol._auth import DEVICE_ID_RE
from edgepkg.protocol._events import EVENT_TYPES
from edgepkg.protocol._windows import MaintenanceWindow, parse_maintenance_window

Json = dict[str, Any]
SlotName = Literal["a", "b"]

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
REPORTED_VERSION_RE = re.compile(r"^[0-9A-Za-z.+-]{1,100}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ROLLOUT_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
EVENT_ID_RE = re.compile(r"^[0-9A-Za-z-]{1,64}$")

MAX_ASSIGNMENTS = 64
MAX_KEY_GRANTS = 2  # one per target an assignment names: the full bundle and the delta
MAX_KEY_GRANT_BYTES = 4096  # = edgepkg.grants.MAX_GRANT_BYTES (a test keeps them equal)
MAX_POLL_INTERVAL_S = 7 * 86400
DEFAULT_POLL_INTERVAL_S = 300
ROLLOUT_STATUSES = ("running", "paused", "aborted", "completed")
HEALTH_NUMBERS = ("latency_p50_ms", "latency_p95_ms", "last_metric")


def _need(cond: bool, message: str, field_name: str) -> None:
    if not cond:
        raise ProtocolError(message, field=field_name)


def _opt_str(value: Any, field_name: str, max_len: int = 512) -> str | None:
    if value is None:
        return None
    _need(isinstance(value, str) and 0 < len(value) <= max_len,
          f"{field_name} must be a non-empty string of at most {max_len} characters", field_name)
    return str(value)


def _object(raw: Any, what: str) -> Mapping[str, Any]:
    _need(isinstance(raw, dict), f"{what} must be a JSON object", what)
    return raw  # type: ignore[no-any-return]


def parse_poll_interval(value: Any) -> int:
    _need(isinstance(value, int) and not isinstance(value, bool)
          and 1 <= value <= MAX_POLL_INTERVAL_S,
          f"poll_interval must be an integer number of seconds between 1 and {MAX_POLL_INTERVAL_S}",
          "poll_interval")
    return int(value)


# --- server -> device ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assignment:
    """What the server asks a device to install (a validated shape; the content is still
    checked against signed TUF metadata by the device)."""

    model: str
    version: str
    target: str
    delta_target: str | None = None
    rollout_id: str | None = None
    allow_downgrade: bool = False
    # Target name -> key grant (edgepkg.grants JSON object) for a device that is not a direct
    # recipient of that bundle. Absent on the wire when empty, so old devices and old servers
    # interoperate: no grants simply means "decrypt with your own key".
    key_grants: dict[str, Json] = field(default_factory=dict)
    # When the device may switch (edgepkg.protocol._windows); absent on the wire when None
    # (switch as soon as validated), so old devices and servers interoperate.
    maintenance_window: MaintenanceWindow | None = None

    def to_json(self) -> Json:
        out: Json = {
            "action": "install",
            "model": self.model,
            "version": self.version,
            "target": self.target,
            "delta_target": self.delta_target,
            "rollout_id": self.rollout_id,
            "allow_downgrade": self.allow_downgrade,
        }
        if self.key_grants:
            out["key_grants"] = {name: dict(g) for name, g in self.key_grants.items()}
        if self.maintenance_window is not None:
            out["maintenance_window"] = self.maintenance_window.to_json()
        return out

    # The device persists assignments in its state file under this name.
    to_dict = to_json


def parse_assignment(raw: Any) -> Assignment:
    obj = _object(raw, "assignment")
    _need(obj.get("action") == "install", "assignment action must be 'install'", "action")
    model = _opt_str(obj.get("model"), "model", 128)
    version = _opt_str(obj.get("version"), "version", 64)
    target = _opt_str(obj.get("target"), "target")
    _need(model is not None and version is not None and target is not None,
          "assignment needs model, version and target", "assignment")
    allow = obj.get("allow_downgrade", False)
    _need(isinstance(allow, bool), "allow_downgrade must be a boolean", "allow_downgrade")
    assert model is not None and version is not None and target is not None
    delta_target = _opt_str(obj.get("delta_target"), "delta_target")
    return Assignment(
        model=model, version=version, target=target,
        delta_target=delta_target,
        rollout_id=_opt_str(obj.get("rollout_id"), "rollout_id", 128),
        allow_downgrade=bool(allow),
        key_grants=parse_key_grants(obj.get("key_grants"), {target, delta_target} - {None}),
        maintenance_window=None if obj.get("maintenance_window") is None
        else parse_maintenance_window(obj.get("maintenance_window")),
    )


def parse_key_grants(raw: Any, targets: set[str | None]) -> dict[str, Json]:
    """The ``key_grants`` of an assignment: at most one grant per target the assignment names,
    each a JSON object of at most :data:`MAX_KEY_GRANT_BYTES`. Only the envelope is checked
    here (the contract stays pure); the device parses each grant with
    ``edgepkg.grants.KeyGrant.from_json`` before it uses one."""
    if raw is None:
        return {}
    _need(isinstance(raw, dict) and len(raw) <= MAX_KEY_GRANTS,
          f"key_grants must be an object of at most {MAX_KEY_GRANTS} target name -> grant",
          "key_grants")
    out: dict[str, Json] = {}
    for name, grant in raw.items():
        _need(name in targets, f"key_grants names {str(name)[:80]!r}, which is not a target of "
              "this assignment", "key_grants")
        where = f"key_grants[{name!r}]"
        _need(isinstance(grant, dict), f"{where} must be a JSON object", where)
        try:
            size = len(json.dumps(grant, separators=(",", ":")).encode())
        except (TypeError, ValueError):
            size = MAX_KEY_GRANT_BYTES + 1
        _need(size <= MAX_KEY_GRANT_BYTES,
              f"{where} is larger than {MAX_KEY_GRANT_BYTES} bytes", where)
        out[str(name)] = dict(grant)
    return out


@dataclass(frozen=True, slots=True)
class CheckinResponse:
    poll_interval: int
    assignments: list[Assignment] = field(default_factory=list)

    def to_json(self) -> Json:
        return {"poll_interval": self.poll_interval,
                "assignments": [a.to_json() for a in self.assignments]}


def parse_checkin_response(raw: Any) -> CheckinResponse:
    obj = _object(raw, "check-in answer")
    items = obj.get("assignments", [])
    _need(isinstance(items, list) and len(items) <= MAX_ASSIGNMENTS,
          f"assignments must be a list of at most {MAX_ASSIGNMENTS}", "assignments")
    return CheckinResponse(
        poll_interval=parse_poll_interval(obj.get("poll_interval", DEFAULT_POLL_INTERVAL_S)),
        assignments=[parse_assignment(a) for a in items],
    )


@dataclass(frozen=True, slots=True)
class EnrollResult:
    device_id: str
    poll_interval: int

    def to_json(self) -> Json:
        return {"device_id": self.device_id, "poll_interval": self.poll_interval}


def parse_enroll_response(raw: Any) -> EnrollResult:
    obj = _object(raw, "enroll answer")
    device_id = obj.get("device_id")
    _need(isinstance(device_id, str) and bool(DEVICE_ID_RE.match(device_id)),
          "device_id must be a key id (64 hex)", "device_id")
    return EnrollResult(
        device_id=str(device_id),
        poll_interval=parse_poll_interval(obj.get("poll_interval", DEFAULT_POLL_INTERVAL_S)),
    )


def parse_rollout_status(raw: Any) -> str:
    obj = _object(raw, "rollout answer")
    status = obj.get("status")
    _need(status in ROLLOUT_STATUSES, f"rollout status must be one of {ROLLOUT_STATUSES}",
          "status")
    return str(status)


@dataclass(frozen=True, slots=True)
class EventsAck:
    accepted: int
    duplicates: int

    def to_json(self) -> Json:
        return {"accepted": self.accepted, "duplicates": self.duplicates}


def parse_events_ack(raw: Any) -> EventsAck:
    obj = _object(raw, "events answer")
    accepted, duplicates = obj.get("accepted", 0), obj.get("duplicates", 0)
    _need(isinstance(accepted, int) and not isinstance(accepted, bool)
          and isinstance(duplicates, int) and not isinstance(duplicates, bool),
          "accepted and duplicates must be integers", "accepted")
    return EventsAck(int(accepted), int(duplicates))


# --- device -> server ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotReport:
    version: str
    sha256: str | None = None

    def to_json(self) -> Json:
        return {"version": self.version, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class ModelReport:
    """One model's A/B slots as the device reports them."""

    active_slot: SlotName | None
    slots: dict[str, SlotReport | None]

    @property
    def active(self) -> SlotReport | None:
        return self.slots.get(self.active_slot) if self.active_slot else None

    def to_json(self) -> Json:
        return {
            "active_slot": self.active_slot,
            "slots": {k: (s.to_json() if s else None) for k, s in self.slots.items()},
        }


def parse_models_report(raw: Any, limit: int) -> dict[str, ModelReport]:
    if raw is None:
        return {}
    _need(isinstance(raw, dict), "'models' must be an object of model name -> slots", "models")
    _need(len(raw) <= limit, f"at most {limit} models per check-in", "models")
    out: dict[str, ModelReport] = {}
    for name, info in raw.items():
        _need(isinstance(name, str) and bool(MODEL_NAME_RE.match(name)),
              f"model name {str(name)[:80]!r} is invalid", "models")
        where = f"models[{name!r}]"
        _need(isinstance(info, dict), f"{where} must be an object", where)
        active = info.get("active_slot")
        _need(active in ("a", "b", None), f"{where}.active_slot must be 'a' or 'b'",
              f"{where}.active_slot")
        slots_raw = info.get("slots") or {}
        _need(isinstance(slots_raw, dict) and not set(slots_raw) - {"a", "b"},
              f"{where}.slots must have only keys 'a' and 'b'", f"{where}.slots")
        slots: dict[str, SlotReport | None] = {}
        for slot in ("a", "b"):
            s = slots_raw.get(slot)
            if s is None:
                slots[slot] = None
                continue
            at = f"{where}.slots.{slot}"
            _need(isinstance(s, dict), f"{at} must be an object or null", at)
            version, sha = s.get("version"), s.get("sha256")
            _need(isinstance(version, str) and bool(REPORTED_VERSION_RE.match(version)),
                  f"{at}.version is invalid", f"{at}.version")
            _need(sha is None or (isinstance(sha, str) and bool(SHA256_RE.match(sha))),
                  f"{at}.sha256 must be hex SHA-256", f"{at}.sha256")
            slots[slot] = SlotReport(version=version, sha256=sha)
        out[name] = ModelReport(active_slot=active, slots=slots)
    return out


@dataclass(frozen=True, slots=True)
class HealthReport:
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    last_metric: float | None = None
    errors: int | dict[str, Any] | None = None

    def to_json(self) -> Json:
        return {"latency_p50_ms": self.latency_p50_ms, "latency_p95_ms": self.latency_p95_ms,
                "last_metric": self.last_metric, "errors": self.errors}


def parse_health_report(raw: Any) -> HealthReport:
    if raw is None:
        return HealthReport()
    _need(isinstance(raw, dict), "'health' must be an object", "health")
    numbers: dict[str, float | None] = {}
    for key in HEALTH_NUMBERS:
        val = raw.get(key)
        _need(val is None or (not isinstance(val, bool) and isinstance(val, int | float)),
              f"health.{key} must be a number or null", f"health.{key}")
        numbers[key] = val
    errors = raw.get("errors")
    _need(errors is None or (not isinstance(errors, bool) and isinstance(errors, int | dict)),
          "health.errors must be an integer or an object of counts", "health.errors")
    return HealthReport(errors=errors, **numbers)


@dataclass(frozen=True, slots=True)
class Event:
    """One event a device reports (``details`` is free-form, bounded JSON)."""

    id: str
    type: str
    time: dt.datetime
    model: str | None = None
    version: str | None = None
    rollout_id: str | None = None
    details: Json = field(default_factory=dict)

    def to_json(self) -> Json:
        return {"id": self.id, "type": self.type, "time": self.time.isoformat(),
                "model": self.model, "version": self.version, "rollout_id": self.rollout_id,
                "details": self.details}


def parse_time(value: Any, field_name: str = "time") -> dt.datetime:
    """An ISO 8601 time (``Z`` allowed; naive times are UTC) as an aware UTC datetime."""
    _need(isinstance(value, str) and len(value) <= 64,
          f"{field_name!r} must be an ISO 8601 time string", field_name)
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        t = dt.datetime.fromisoformat(text)
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        return t.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise ProtocolError(f"{field_name!r} is not an ISO 8601 time: {value!r}",
                            field=field_name) from None


def parse_event(raw: Any, index: int, *, max_details_bytes: int = 16384) -> Event:
    where = f"events[{index}]"
    _need(isinstance(raw, dict), f"{where} must be an object", where)
    event_id = raw.get("id")
    ok = isinstance(event_id, str) and bool(EVENT_ID_RE.match(event_id))
    if ok:
        try:
            event_id = str(uuid.UUID(event_id))
        except ValueError:
            ok = False
    _need(ok, f"{where}.id must be a UUID string", f"{where}.id")
    etype = raw.get("type")
    if etype not in EVENT_TYPES:
        raise ProtocolError(f"{where}.type must be one of {', '.join(EVENT_TYPES)}",
                            field=f"{where}.type", code="bad_event_type")
    model = raw.get("model")
    _need(model is None or (isinstance(model, str) and bool(MODEL_NAME_RE.match(model))),
          f"{where}.model is invalid", f"{where}.model")
    version = raw.get("version")
    _need(
        version is None or (isinstance(version, str) and bool(REPORTED_VERSION_RE.match(version))),
        f"{where}.version is invalid",
        f"{where}.version",
    )
    rollout_id = raw.get("rollout_id")
    _need(rollout_id is None
          or (isinstance(rollout_id, str) and bool(ROLLOUT_ID_RE.match(rollout_id))),
          f"{where}.rollout_id is invalid", f"{where}.rollout_id")
    details = raw.get("details")
    if details is None:
        details = {}
    _need(isinstance(details, dict), "'details' must be a JSON object", f"{where}.details")
    _need(len(json.dumps(details)) <= max_details_bytes,
          f"'details' is larger than {max_details_bytes} bytes", f"{where}.details")
    return Event(
        id=str(event_id),
        type=str(etype),
        time=parse_time(raw.get("time"), f"{where}.time"),
        model=model,
        version=version,
        rollout_id=rollout_id,
        details=details,
    )
