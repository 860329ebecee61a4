"""The crash-safe queue of telemetry reports and the daily byte budget.

Storage (like :mod:`device_updater.events`): a directory with one file per report,
``<seq:020d>.json`` = ``{"report": ..., "intervals": n, "attempted": bool}``, each written
atomically (temp, fsync, rename, fsync dir), plus ``meta.json`` (next seq, intervals dropped and
not yet reported, bytes sent on the current UTC day, back-off deadline). A SIGKILL at any
instant leaves whole files: a report is either queued or not, and a seq is never reused.

Bounded: at most ``max_reports`` files. When the queue is full (long offline period) or the
queued reports do not fit today's remaining budget, the two oldest adjacent reports are merged
into one covering both intervals (counts and histograms add: :mod:`.merge`) instead of losing
data; only when no pair can be merged (a model's version changed between them) is the oldest
report dropped, its intervals added to the next report's ``dropped_intervals``. A report that
was already offered to the server (``attempted``) is never merged: the server may have stored
it under its seq, and merging it into another seq would count its data twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from device_updater._fsutil import atomic_write_json, file_lock, read_limited, remove_durably
from device_updater.errors import Error
from device_updater.telemetry.merge import merge_reports
from edgepkg.errors import ProtocolError
from edgepkg.protocol import HardwareHealth, ModelTelemetry, TelemetryReport
from edgepkg.protocol._telemetry import parse_telemetry_report

log = logging.getLogger("edge_updater")

_NAME = re.compile(r"^(\d{20})\.json$")
MAX_REPORT_FILE = 512 * 1024


class TelemetryQueueError(Error):
    """The telemetry queue directory cannot be used (permissions, disk)."""


def encode(report: TelemetryReport) -> bytes:
    """The exact body :meth:`DeviceClient.post_telemetry` sends (what the budget counts)."""
    return json.dumps(report.to_json(), separators=(",", ":")).encode()


@dataclass(frozen=True)
class Queued:
    report: TelemetryReport
    intervals: int
    attempted: bool
    path: Path

    @property
    def size(self) -> int:
        return len(encode(self.report))


def _day(now: float) -> str:
    return dt.datetime.fromtimestamp(now, tz=dt.UTC).date().isoformat()


class TelemetryQueue:
    def __init__(self, path: Path, *, max_reports: int = 96,
                 daily_byte_budget: int = 64 * 1024) -> None:
        if max_reports < 2:
            raise TelemetryQueueError("the telemetry queue needs room for at least 2 reports")
        self.path = Path(path)
        self.max_reports = max_reports
        self.daily_byte_budget = daily_byte_budget
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise TelemetryQueueError(f"cannot create telemetry queue {self.path}: {exc}") from exc

    # -- meta ----------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        try:
            obj = json.loads(read_limited(self.path / "meta.json", 4096))
            return obj if isinstance(obj, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_meta(self, meta: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / "meta.json", dict(meta))

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.path / ".lock")

    # -- files ---------------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        out = []
        for p in self.path.iterdir():
            if _NAME.match(p.name):
                out.append(p)
            elif p.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()  # left by a write killed mid-way
        return sorted(out)

    def _read(self, p: Path) -> Queued | None:
        try:
            obj = json.loads(read_limited(p, MAX_REPORT_FILE))
            return Queued(parse_telemetry_report(obj["report"]), int(obj["intervals"]),
                          bool(obj["attempted"]), p)
        except (OSError, ValueError, KeyError, TypeError, ProtocolError):
            log.error("dropping unreadable telemetry report %s", p.name)
            with contextlib.suppress(OSError):
                p.unlink()
            return None

    def _write(self, report: TelemetryReport, intervals: int, attempted: bool = False) -> Path:
        p = self.path / f"{report.seq:020d}.json"
        atomic_write_json(p, {"report": report.to_json(), "intervals": intervals,
                              "attempted": attempted})
        return p

    def pending(self) -> list[Queued]:
        """Queued reports, oldest first."""
        return [q for q in map(self._read, self._files()) if q is not None]

    def __len__(self) -> int:
        return len(self._files())

    # -- adding ----------------------------------------------------------------------------------
    def enqueue(self, models: Mapping[str, ModelTelemetry], start: dt.datetime,
                end: dt.datetime, hardware: HardwareHealth) -> TelemetryReport:
        """Persist one interval's report under the next seq; compact if the queue is full."""
        with self._lock():
            meta = self._meta()
            seq = int(meta.get("next_seq", 1))
            dropped = int(meta.get("dropped", 0))
            report = TelemetryReport(seq=seq, interval_start=start, interval_end=end,
                                     models=dict(models), hardware=hardware,
                                     dropped_intervals=dropped)
            # The seq is spent before the file exists: a kill in between skips a seq (harmless)
            # but can never make two reports share one.
            meta.update(next_seq=seq + 1, dropped=0)
            self._save_meta(meta)
            self._write(report, 1)
            while len(self._files()) > self.max_reports:
                self._compact_once()
        return report

    def _compact_once(self) -> None:
        items = [q for q in self.pending() if not q.attempted]
        if self._merge_oldest_pair(items):
            return
        victim = self.pending()[0]
        self._drop(victim)

    def _merge_oldest_pair(self, items: list[Queued]) -> bool:
        for a, b in itertools.pairwise(items):
            merged = merge_reports(a.report, b.report)
            if merged is None:
                continue
            # Write the merged report under b's seq first, then remove a: a kill in between
            # leaves a's data twice in the queue (over-counted), never lost.
            self._write(merged, a.intervals + b.intervals)
            remove_durably(a.path)
            return True
        return False

    def _drop(self, victim: Queued) -> None:
        rest = [q for q in self.pending() if q.path != victim.path]
        lost = victim.intervals + victim.report.dropped_intervals
        nxt = next((q for q in rest if not q.attempted), None)
        if nxt is not None:
            self._write(replace(nxt.report, dropped_intervals=nxt.report.dropped_intervals
                                + lost), nxt.intervals, nxt.attempted)
        else:
            meta = self._meta()
            meta["dropped"] = int(meta.get("dropped", 0)) + lost
            self._save_meta(meta)
        remove_durably(victim.path)
        log.warning("telemetry queue: dropped %d interval(s) that could not be merged", lost)

    # -- budget ----------------------------------------------------------------------------------
    def budget_left(self, now: float) -> int:
        meta = self._meta()
        sent = int(meta.get("sent", 0)) if meta.get("day") == _day(now) else 0
        return max(0, self.daily_byte_budget - sent)

    def record_sent(self, nbytes: int, now: float) -> None:
        with self._lock():
            meta = self._meta()
            if meta.get("day") != _day(now):
                meta.update(day=_day(now), sent=0)
            meta["sent"] = int(meta.get("sent", 0)) + nbytes
            self._save_meta(meta)

    def fit_budget(self, now: float) -> int:
        """Merge queued reports (oldest pairs first) until they fit what is left of today's
        budget or nothing more can be merged; return how many merges were made."""
        left = self.budget_left(now)
        merges = 0
        with self._lock():
            while True:
                items = self.pending()
                if left <= 0 or len(items) < 2 or sum(q.size for q in items) <= left:
                    return merges
                if not self._merge_oldest_pair([q for q in items if not q.attempted]):
                    return merges
                merges += 1

    def backoff_until(self) -> float:
        return float(self._meta().get("backoff_until", 0.0))

    def set_backoff(self, until: float) -> None:
        with self._lock():
            meta = self._meta()
            meta["backoff_until"] = until
            self._save_meta(meta)

    # -- after sending ---------------------------------------------------------------------------
    def mark_attempted(self, item: Queued) -> None:
        if not item.attempted:
            with self._lock():
                self._write(item.report, item.intervals, attempted=True)

    def remove(self, item: Queued) -> None:
        with self._lock():
            remove_durably(item.path)

    def drop(self, item: Queued) -> None:
        """Give up on a report the server refused (malformed for it): counted as dropped."""
        with self._lock():
            self._drop(item)
