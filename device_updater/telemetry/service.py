"""The daemon's telemetry orchestrator: socket -> aggregator -> queue -> server.

:class:`TelemetryService` owns the local socket (:mod:`.server`), folds records into the
current interval (:mod:`.aggregate`), closes an interval every ``interval_s`` into a
:class:`~edgepkg.protocol.TelemetryReport` with hardware health (:mod:`.hardware`) and drift
scores against the reference profile (:mod:`.reference`, :mod:`.drift`), persists it
(:mod:`.queue`) and sends queued reports oldest first within the daily byte budget, on its own
timer and at every check-in (:meth:`flush`). A 429 keeps the queue and backs off for the
server's Retry-After; being offline keeps the queue. Nothing here may stop an update cycle:
the agent calls it with errors suppressed.

Sampled capture (``capture_sample_rate`` > 0, off by default): a random sample of the records
the app sends, feature vectors included, is appended to a bounded local spool
(``<state_dir>/telemetry/capture/``). In this issue the spool never leaves the device; an
operator fetches it by hand. Note that features are what the app sends: raw input values only
for inputs of at most 32 values, a per-sample summary otherwise.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from device_updater.config import Config
from device_updater.errors import Error, ServerRefusedError, TransportError
from device_updater.http import RateLimitedError
from device_updater.layout import Layout
from device_updater.telemetry import drift
from device_updater.telemetry.aggregate import Aggregator, VersionLookup
from device_updater.telemetry.hardware import read_hardware
from device_updater.telemetry.queue import TelemetryQueue, encode
from device_updater.telemetry.records import Inference, Record
from device_updater.telemetry.reference import ProfileCache
from device_updater.telemetry.server import TelemetrySocketServer
from device_updater.telemetry.settings import TelemetryConfig
from edgepkg.protocol import HardwareHealth, ModelTelemetry, TelemetryReport

log = logging.getLogger("edge_updater")


class Sender(Protocol):
    def post_telemetry(self, report: TelemetryReport) -> bool: ...


@dataclass
class FlushResult:
    sent: int = 0
    bytes: int = 0
    merged: int = 0
    waiting: int = 0  # still queued afterwards
    reason: str = ""  # why it stopped early ("budget", "backoff", "offline", ...)


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC)


class TelemetryService:
    def __init__(self, config: TelemetryConfig, *, state_dir: Path, runtime_dir: Path,
                 models_dir: Path, sender: Sender, version_of: VersionLookup,
                 clock: Callable[[], float] = time.time,
                 hardware: Callable[[], HardwareHealth] | None = None,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.sender = sender
        self.clock = clock
        self.dir = state_dir / "telemetry"
        self.profiles = ProfileCache(models_dir)
        self.aggregator = Aggregator(version_of, self.profiles.get)
        self.queue = TelemetryQueue(self.dir / "queue", max_reports=config.max_queued,
                                    daily_byte_budget=config.daily_byte_budget)
        self.hardware = hardware or (lambda: read_hardware(state_dir))
        self.socket_path = config.socket or runtime_dir / "telemetry.sock"
        self.server = TelemetrySocketServer(self.socket_path, self.record,
                                            max_records_per_s=config.max_records_per_s)
        self.rng = rng or random.Random()
        self.interval_start = clock()
        self._lock = threading.Lock()  # the aggregator (socket threads vs the timer)
        self._send_lock = threading.Lock()  # one flush at a time (timer vs check-in)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._captured = 0

    # -- intake ----------------------------------------------------------------------------------
    def record(self, rec: Record) -> None:
        with self._lock:
            self.aggregator.add(rec)
        if self.config.capture_sample_rate > 0 and isinstance(rec, Inference) \
                and self.rng.random() < self.config.capture_sample_rate:
            self._capture(rec)

    def _capture(self, rec: Inference) -> None:
        spool = self.dir / "capture"
        with contextlib.suppress(OSError):
            spool.mkdir(parents=True, exist_ok=True, mode=0o700)
            day = _utc(self.clock()).date().isoformat()
            path = spool / f"{day}.jsonl"
            if self._captured >= self.config.capture_max_files * 100:
                return  # bounded: at most capture_max_files * 100 records per daemon run
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(asdict(rec)) + "\n")
            self._captured += 1
            files = sorted(spool.glob("*.jsonl"))
            for stale in files[:-self.config.capture_max_files]:
                stale.unlink()

    # -- intervals -------------------------------------------------------------------------------
    def close_interval(self) -> TelemetryReport:
        """End the current interval: summarise, add hardware, persist to the queue."""
        now = self.clock()
        with self._lock:
            models = self.aggregator.close()
            start, self.interval_start = self.interval_start, now
        self._learn_outputs(models)
        try:
            hw = self.hardware()
        except Exception:  # a sensor fault must not lose the interval
            hw = HardwareHealth()
        return self.queue.enqueue(models, _utc(start), _utc(max(now, start)), hw)

    def _learn_outputs(self, models: dict[str, ModelTelemetry]) -> None:
        """The output part of a profile recorded from the holdout alone comes from the first
        field interval with enough predictions (see :mod:`.reference`)."""
        for name, mt in models.items():
            profile = self.profiles.get(name, mt.version)
            if profile is None or profile.has_outputs:
                continue
            n = max(sum(mt.class_counts), mt.confidence.count if mt.confidence else 0)
            if n >= drift.MIN_SAMPLES:
                with contextlib.suppress(OSError, Error):
                    self.profiles.put(profile.with_outputs(mt.class_counts, mt.confidence,
                                                           "field"))

    # -- sending ---------------------------------------------------------------------------------
    def flush(self) -> FlushResult:
        """Send queued reports, oldest first, within today's budget."""
        with self._send_lock:
            return self._flush()

    def _flush(self) -> FlushResult:
        res = FlushResult()
        now = self.clock()
        if now < self.queue.backoff_until():
            res.reason, res.waiting = "backoff", len(self.queue)
            return res
        res.merged = self.queue.fit_budget(now)
        for item in self.queue.pending():
            body = len(encode(item.report))
            if body > self.queue.budget_left(now):
                res.reason = "budget"
                break
            self.queue.mark_attempted(item)
            try:
                self.sender.post_telemetry(item.report)
            except RateLimitedError as exc:
                self.queue.record_sent(body, now)
                self.queue.set_backoff(now + exc.retry_after_s)
                res.reason = "backoff"
                break
            except TransportError:
                res.reason = "offline"
                break
            except ServerRefusedError as exc:
                # The server will never take this report: keep the rest flowing.
                log.error("telemetry report refused, dropped", extra={"error": str(exc)})
                self.queue.record_sent(body, now)
                self.queue.drop(item)
                continue
            self.queue.record_sent(body, now)
            self.queue.remove(item)
            res.sent += 1
            res.bytes += body
        res.waiting = len(self.queue)
        return res

    # -- the daemon's thread ---------------------------------------------------------------------
    def start(self) -> None:
        self.server.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.server.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            try:
                self.close_interval()
                self.flush()
            except Exception as exc:  # the thread must outlive any fault
                log.error("telemetry interval failed", extra={"error": str(exc)})


def for_agent(config: Config, layout: Layout, sender: Sender, version_of: VersionLookup,
              clock: Callable[[], float]) -> TelemetryService | None:
    """The agent's telemetry service, or None when ``[telemetry] enabled = false``."""
    if not config.telemetry.enabled:
        return None
    return TelemetryService(config.telemetry, state_dir=config.state_dir,
                            runtime_dir=config.runtime_dir, models_dir=layout.models,
                            sender=sender, version_of=version_of, clock=clock)
