"""The update state file: the I/O shell around the pure state machine in
:mod:`device_updater.state` (atomic durable saves, a load that never crashes, the clean-stop
marker)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from device_updater._fsutil import atomic_write_json, read_limited, remove_durably
from device_updater.errors import CorruptStateError
from device_updater.state import MAX_STATE_BYTES, UpdateState

log = logging.getLogger("device_updater.state")


class StateStore:
    """The state file: atomic, durable saves; a load that never crashes.

    A missing file is IDLE. A corrupt file (bad JSON, unknown schema, wrong types) is moved
    aside to ``<name>.corrupt`` and recovery starts from IDLE with the reason recorded: with the
    slots untouched the pointer still names a verified model, and the updater re-checks.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> UpdateState:
        try:
            raw = read_limited(self.path, MAX_STATE_BYTES)
        except FileNotFoundError:
            return UpdateState()
        except (OSError, ValueError) as exc:
            return self._corrupt(f"state file unreadable: {exc}")
        try:
            return UpdateState.from_dict(json.loads(raw))
        except (ValueError, CorruptStateError) as exc:
            return self._corrupt(str(exc))

    def _corrupt(self, reason: str) -> UpdateState:
        log.error("state file %s is corrupt (%s); starting from idle", self.path, reason)
        try:
            aside = self.path.with_name(self.path.name + ".corrupt")
            self.path.replace(aside)
        except OSError:
            pass
        return UpdateState(reason=f"state file was corrupt and was reset: {reason}")

    def save(self, state: UpdateState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, state.to_dict())

    # --- clean-stop marker: tells a crash (power cut, SIGKILL) from a clean exit ----------------

    @property
    def _running(self) -> Path:
        return self.path.with_name(self.path.name + ".running")

    def was_running(self) -> bool:
        """True if the last process that ran recovery did not call :meth:`mark_stopped`."""
        return self._running.exists()

    def mark_running(self) -> None:
        """Record (durably) that an updater process is working on this state."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self._running, {"running": True})

    def mark_stopped(self) -> None:
        """Call on a clean exit (end of ``check``, SIGTERM) after the last save: the next
        start-up then resumes a trial instead of treating the restart as a crash."""
        remove_durably(self._running)
