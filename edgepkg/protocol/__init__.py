"""The device <-> server contract: one pure, typed copy that both wings and the tests import.

What lives here: how a device signs a request (:func:`signing_string`, the header names, the
key id), the messages and their strict parsers (check-in report and answer, assignment, events,
enrollment), the event types, the one semantic-version parser, and TUF target naming.
Nothing here does I/O or imports a third-party library; errors are
:class:`~edgepkg.errors.ProtocolError` (untrusted input) naming the offending field.
"""

from edgepkg.errors import ProtocolError
from edgepkg.protocol._auth import (
    AUTH_DOMAIN,
    DEVICE_ID_RE,
    HEADER_DEVICE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MAX_SIGNATURE_B64,
    NONCE_RE,
    TIMESTAMP_RE,
    key_id_from_spki,
    path_with_query,
    signing_string,
)
from edgepkg.protocol._events import (
    EVENT_TYPES,
    FAILURE_EVENTS,
    MAX_EVENT_BYTES,
    SUCCESS_EVENTS,
    EventType,
)
from edgepkg.protocol._messages import (
    DEFAULT_POLL_INTERVAL_S,
    MAX_ASSIGNMENTS,
    MAX_KEY_GRANT_BYTES,
    MAX_KEY_GRANTS,
    MODEL_NAME_RE,
    REPORTED_VERSION_RE,
    ROLLOUT_ID_RE,
    ROLLOUT_STATUSES,
    SHA256_RE,
    Assignment,
    CheckinResponse,
    EnrollResult,
    Event,
    EventsAck,
    HealthReport,
    ModelReport,
    SlotReport,
    parse_assignment,
    parse_checkin_response,
    parse_enroll_response,
    parse_event,
    parse_events_ack,
    parse_health_report,
    parse_key_grants,
    parse_models_report,
    parse_poll_interval,
    parse_rollout_status,
    parse_time,
)
from edgepkg.protocol._targets import (
    TARGET_NAME_RE,
    TARGET_VERSION_RE,
    check_target_model,
    check_target_version,
    delta_target_name,
    full_target_name,
    release_dir,
)
from edgepkg.protocol._versions import (
    InvalidVersionError,
    Version,
    is_newer,
    is_version,
    version_key,
)

__all__ = [
    "AUTH_DOMAIN", "DEFAULT_POLL_INTERVAL_S", "DEVICE_ID_RE", "EVENT_TYPES", "FAILURE_EVENTS",
    "HEADER_DEVICE", "HEADER_NONCE", "HEADER_SIGNATURE", "HEADER_TIMESTAMP", "MAX_ASSIGNMENTS",
    "MAX_EVENT_BYTES", "MAX_KEY_GRANTS", "MAX_KEY_GRANT_BYTES", "MAX_SIGNATURE_B64",
    "MODEL_NAME_RE", "NONCE_RE", "REPORTED_VERSION_RE",
    "ROLLOUT_ID_RE", "ROLLOUT_STATUSES", "SHA256_RE", "SUCCESS_EVENTS", "TARGET_NAME_RE",
    "TARGET_VERSION_RE", "TIMESTAMP_RE", "Assignment", "CheckinResponse", "EnrollResult",
    "Event", "EventType", "EventsAck", "HealthReport", "InvalidVersionError", "ModelReport",
    "ProtocolError", "SlotReport", "Version", "check_target_model", "check_target_version",
    "delta_target_name", "full_target_name", "is_newer", "is_version", "key_id_from_spki",
    "parse_assignment", "parse_checkin_response", "parse_enroll_response", "parse_event",
    "parse_events_ack", "parse_health_report", "parse_key_grants", "parse_models_report",
    "parse_poll_interval",
    "parse_rollout_status", "parse_time", "path_with_query", "release_dir", "signing_string",
    "version_key",
]
