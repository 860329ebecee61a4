"""A persistent, crash-safe queue of events for the update server.

Every step of an update produces an event (``download_started`` ... ``rejected``); the daemon
appends it here and flushes the queue to ``POST /api/v1/devices/<id>/events`` when the network
is up, then acks what the server accepted (the server is idempotent by event id, so a flush
that dies after sending but before the ack only causes duplicates the server ignores).

Storage: a directory with one file per event, ``<seq:020d>-<uuid>.json``, each written
atomically (temp, fsync, rename, fsync dir). A SIGKILL at any instant leaves either the whole
event or nothing (stray temp files are ignored and cleaned). The queue is bounded: past
``max_events`` the oldest events are dropped and the count of dropped events is added to the
``details`` of the next event appended (``details["dropped_events"]``), so the server learns
that a gap exists without a new event type.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from device_updater._fsutil import (
    atomic_write_json,
    file_lock,
    fsync_dir,
    read_limited,
    remove_durably,
)
from device_updater.errors import EventQueueError
from edgepkg.protocol import EVENT_TYPES as _PROTOCOL_EVENT_TYPES, MAX_EVENT_BYTES

log = logging.getLogger(__name__)

# The event types and the size limit are the device<->server contract's (one copy).
EVENT_TYPES = frozenset(_PROTOCOL_EVENT_TYPES)
_NAME = re.compile(r"^(\d{20})-([0-9a-f-]{36})\.json$")


def iso_time(now: float) -> str:
    """UNIX seconds -> ISO 8601 UTC with a ``Z`` suffix."""
    t = _dt.datetime.fromtimestamp(now, tz=_dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_event(type: str, *, now: float, model: str | None = None,
               version: str | None = None, rollout_id: str | None = None,
               details: Mapping[str, Any] | None = None,
               event_id: str | None = None) -> dict[str, Any]:
    """Build an event dict in the server's shape (validated; raises :class:`EventQueueError`)."""
    event = {
        "id": event_id or str(uuid.uuid4()),
        "type": type,
        "time": iso_time(now),
        "model": model,
        "version": version,
        "rollout_id": rollout_id,
        "details": dict(details or {}),
    }
    check_event(event)
    return event


def check_event(event: Mapping[str, Any]) -> None:
    """Raise :class:`EventQueueError` unless ``event`` has the server's event shape."""
    if not isinstance(event, Mapping):
        raise EventQueueError("an event must be a JSON object")
    if event.get("type") not in EVENT_TYPES:
        raise EventQueueError(
            f"unknown event type {event.get('type')!r}; allowed: {sorted(EVENT_TYPES)}")
    try:
        uuid.UUID(str(event.get("id")))
    except ValueError:
        raise EventQueueError(f"event id {event.get('id')!r} is not a UUID") from None
    if not isinstance(event.get("time"), str):
        raise EventQueueError("event time must be an ISO 8601 string")
    for key in ("model", "version", "rollout_id"):
        if event.get(key) is not None and not isinstance(event[key], str):
            raise EventQueueError(f"event {key} must be a string or null")
    if not isinstance(event.get("details", {}), Mapping):
        raise EventQueueError("event details must be an object")
    try:
        size = len(json.dumps(event, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise EventQueueError(f"event is not JSON-serialisable: {exc}") from None
    if size > MAX_EVENT_BYTES:
        raise EventQueueError(f"event is {size} bytes, limit {MAX_EVENT_BYTES}")


class EventQueue:
    """Persistent FIFO of event dicts under directory ``path`` (created, mode 0700)."""

    def __init__(self, path: Path, *, max_events: int = 1000) -> None:
        if max_events < 1:
            raise EventQueueError("max_events must be at least 1")
        self.path = Path(path)
        self.max_events = max_events
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise EventQueueError(f"cannot create event queue {self.path}: {exc}") from exc

    def _entries(self, *, clean: bool = False) -> list[tuple[int, str, Path]]:
        out = []
        for p in self.path.iterdir():
            m = _NAME.match(p.name)
            if m:
                out.append((int(m[1]), m[2], p))
            elif clean and p.name.endswith(".tmp"):
                # A temp file left by a write killed mid-way (we hold the lock): never an event.
                with contextlib.suppress(OSError):
                    p.unlink()
        out.sort()
        return out

    def _dropped_path(self) -> Path:
        return self.path / "dropped"

    def _read_dropped(self) -> int:
        try:
            return int(read_limited(self._dropped_path(), 64).decode().strip() or 0)
        except (OSError, ValueError):
            return 0

    def append(self, event: Mapping[str, Any]) -> str:
        """Persist ``event`` (durably, before returning); return its id.

        If older events had to be dropped for the size cap, the next appended event carries
        ``details["dropped_events"] = n``.
        """
        ev = dict(event)
        ev["details"] = dict(ev.get("details") or {})
        check_event(ev)
        with file_lock(self.path / ".lock"):
            entries = self._entries(clean=True)
            dropped = self._read_dropped()
            if dropped:
                ev["details"]["dropped_events"] = dropped
            seq = entries[-1][0] + 1 if entries else 1
            excess = len(entries) + 1 - self.max_events
            if excess > 0:
                # Make room first, so a kill at any point never leaves more than max_events.
                # Count before deleting: a kill in between over-reports, never under-reports.
                victims = [p for _, _, p in entries[:excess]]
                atomic_write_json(self._dropped_path(), dropped + excess)
                remove_durably(*victims)
                log.warning("event queue full: dropped %d oldest events", excess)
            atomic_write_json(self.path / f"{seq:020d}-{ev['id']}.json", ev)
            if dropped or excess > 0:
                if excess > 0:
                    atomic_write_json(self._dropped_path(), excess)
                else:
                    remove_durably(self._dropped_path())
        return str(ev["id"])

    def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        """The oldest ``limit`` events not yet acked, oldest first (unreadable files skipped)."""
        out: list[dict[str, Any]] = []
        for _, _, p in self._entries():
            if len(out) >= limit:
                break
            try:
                ev = json.loads(read_limited(p, MAX_EVENT_BYTES + 1024))
                check_event(ev)
            except (OSError, ValueError, EventQueueError):
                log.error("dropping unreadable event file %s", p.name)
                with contextlib.suppress(OSError):
                    p.unlink()
                continue
            out.append(ev)
        return out

    def ack(self, ids: Iterable[str]) -> int:
        """Remove the events with these ids (sent and accepted); return how many were removed."""
        wanted = set(ids)
        if not wanted:
            return 0
        with file_lock(self.path / ".lock"):
            victims = [p for _, eid, p in self._entries() if eid in wanted]
            for p in victims:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
            if victims:
                fsync_dir(self.path)
        return len(victims)

    def __len__(self) -> int:
        return len(self._entries())

    @property
    def dropped(self) -> int:
        """Events dropped for the size cap and not yet reported."""
        return self._read_dropped()
