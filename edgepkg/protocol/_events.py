"""The events a device reports about an update, and what a rollout counts them as."""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    DOWNLOAD_STARTED = "download_started"
    DOWNLOAD_FINISHED = "download_finished"
    VERIFICATION_FAILED = "verification_failed"
    VALIDATION_RESULT = "validation_result"
    INSTALLED = "installed"
    TRIAL_STARTED = "trial_started"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"


EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)
"""Every event type, in lifecycle order (as stored and documented)."""

SUCCESS_EVENTS = frozenset({EventType.COMMITTED.value})
"""A device that reported one of these finished its update well."""

FAILURE_EVENTS = frozenset(
    {EventType.REJECTED.value, EventType.ROLLED_BACK.value, EventType.VERIFICATION_FAILED.value}
)
"""A device that reported one of these failed its update (rollouts count them)."""

MAX_EVENT_BYTES = 32 * 1024
"""The largest event (JSON) a device queues or a server accepts."""
