"""The report queue and the byte budget: a day fits, over budget merges then drops (counted),
429 backs off, and the queue survives a kill."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from device_updater.http import RateLimitedError
from device_updater.telemetry.aggregate import Aggregator
from device_updater.telemetry.queue import TelemetryQueue, encode
from device_updater.telemetry.service import TelemetryService
from device_updater.telemetry.settings import DEFAULT_DAILY_BYTE_BUDGET, TelemetryConfig
from edgepkg.protocol import HardwareHealth, TelemetryReport, parse_telemetry_report
from tests.device_updater._telemetry_support import aggregator, feed, profile

DAY0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC).timestamp()


class FakeServer:
    def __init__(self) -> None:
        self.reports: list[TelemetryReport] = []
        self.fail: Exception | None = None

    def post_telemetry(self, report: TelemetryReport) -> bool:
        if self.fail is not None:
            raise self.fail
        # the wire format round-trips through the contract's parser
        self.reports.append(parse_telemetry_report(report.to_json()))
        return True


class Clock:
    def __init__(self, t: float = DAY0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _service(tmp_path: Path, clock: Clock, server: FakeServer, **cfg: object) -> TelemetryService:
    conf = TelemetryConfig(**cfg)  # type: ignore[arg-type]
    svc = TelemetryService(conf, state_dir=tmp_path / "state", runtime_dir=tmp_path / "run",
                           models_dir=tmp_path / "models", sender=server,
                           version_of=lambda m: "1.0.0", clock=clock,
                           hardware=lambda: HardwareHealth(cpu_temp_c=50.0, load1=0.5))
    prof = profile()
    svc.aggregator = aggregator(prof)
    return svc


def _one_day(svc: TelemetryService, clock: Clock, *, per_interval: int = 300) -> None:
    for i in range(288):
        feed(svc.aggregator, per_interval, seed=i)
        svc.close_interval()
        svc.flush()
        clock.t += 300  # the 288 intervals close within one UTC day


def test_a_day_of_default_intervals_fits_the_default_budget(tmp_path: Path) -> None:
    clock, server = Clock(), FakeServer()
    svc = _service(tmp_path, clock, server)
    _one_day(svc, clock, per_interval=50)
    assert len(server.reports) == 288 and len(svc.queue) == 0
    sent = sum(len(encode(r)) for r in server.reports)
    assert sent <= DEFAULT_DAILY_BYTE_BUDGET
    assert [r.seq for r in server.reports] == list(range(1, 289))
    assert all(r.dropped_intervals == 0 for r in server.reports)


def test_over_budget_merges_intervals_instead_of_dropping(tmp_path: Path) -> None:
    clock, server = Clock(), FakeServer()
    svc = _service(tmp_path, clock, server, daily_byte_budget=64 * 1024)
    _one_day(svc, clock, per_interval=50)
    sent = sum(len(encode(r)) for r in server.reports)
    assert sent <= 64 * 1024
    total = sum(r.models["clf"].inferences for r in server.reports)
    queued = sum(q.report.models["clf"].inferences for q in svc.queue.pending())
    assert total + queued == 288 * 50  # nothing lost: merged, and the rest waits for tomorrow
    assert len(server.reports) < 288
    clock.t += 86400  # a new day: a new budget
    svc.flush()
    assert sum(r.models["clf"].inferences for r in server.reports) == 288 * 50


def test_when_merging_cannot_help_the_oldest_is_dropped_and_counted(tmp_path: Path) -> None:
    q = TelemetryQueue(tmp_path / "q", max_reports=3)
    t = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    for i in range(5):  # every interval has another version: no two can be merged
        agg = Aggregator(lambda m, i=i: f"1.0.{i}", lambda m, v: None)
        feed(agg, 10)
        q.enqueue(agg.close(), t, t, HardwareHealth())
    items = q.pending()
    assert len(items) == 3
    assert items[0].report.dropped_intervals == 2
    assert [it.report.models["clf"].version for it in items] == ["1.0.2", "1.0.3", "1.0.4"]


def test_a_full_queue_merges_the_oldest_pair(tmp_path: Path) -> None:
    q = TelemetryQueue(tmp_path / "q", max_reports=4)
    t = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    agg = aggregator(profile())
    for i in range(10):
        feed(agg, 10, seed=i)
        q.enqueue(agg.close(), t + dt.timedelta(minutes=5 * i),
                  t + dt.timedelta(minutes=5 * i + 5), HardwareHealth())
    items = q.pending()
    assert len(items) == 4
    assert sum(it.intervals for it in items) == 10
    assert sum(it.report.models["clf"].inferences for it in items) == 100
    assert all(it.report.dropped_intervals == 0 for it in items)


def test_429_keeps_the_queue_and_backs_off_for_retry_after(tmp_path: Path) -> None:
    clock, server = Clock(), FakeServer()
    svc = _service(tmp_path, clock, server)
    feed(svc.aggregator, 100)
    svc.close_interval()
    server.fail = RateLimitedError("busy", retry_after_s=120)
    assert svc.flush().reason == "backoff"
    server.fail = None
    clock.t += 60
    res = svc.flush()
    assert res.reason == "backoff" and res.sent == 0 and len(svc.queue) == 1
    clock.t += 61
    assert svc.flush().sent == 1 and len(server.reports) == 1


def test_offline_keeps_the_queue(tmp_path: Path) -> None:
    from device_updater.errors import TransportError

    clock, server = Clock(), FakeServer()
    svc = _service(tmp_path, clock, server)
    server.fail = TransportError("down")
    for _ in range(3):
        feed(svc.aggregator, 100)
        svc.close_interval()
        assert svc.flush().reason == "offline"
    server.fail = None
    assert svc.flush().sent == 3
    assert [r.seq for r in server.reports] == [1, 2, 3]


_CHILD = textwrap.dedent("""
    import datetime as dt, os, sys
    from pathlib import Path
    from device_updater.telemetry.queue import TelemetryQueue
    from device_updater.telemetry.aggregate import Aggregator
    from device_updater.telemetry.records import Inference
    from edgepkg.protocol import HardwareHealth
    q = TelemetryQueue(Path(sys.argv[1]))
    t = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    i = 0
    while True:
        agg = Aggregator(lambda m: "1.0.0", lambda m, v: None)
        agg.add(Inference(model="clf", latency_ms=1.0))
        q.enqueue(agg.close(), t, t, HardwareHealth())
        i += 1
        if i == 5:
            print("ready", flush=True)
""")


def test_the_queue_survives_a_kill_mid_write(tmp_path: Path, repo_root: Path) -> None:
    qdir = tmp_path / "q"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(qdir)], cwd=repo_root,
                            stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    q = TelemetryQueue(qdir)
    items = q.pending()  # every file left is a whole, valid report (or was cleaned)
    assert len(items) >= 5
    seqs = [it.report.seq for it in items]
    assert seqs == sorted(set(seqs))
    assert not list(qdir.glob("*.tmp"))
    t = dt.datetime(2025, 1, 2, tzinfo=dt.UTC)
    new = q.enqueue({}, t, t, HardwareHealth())
    assert new.seq > seqs[-1]  # a seq is never reused after a restart


def test_budget_config_is_checked() -> None:
    from device_updater.errors import ConfigError

    with pytest.raises(ConfigError, match="daily_byte_budget"):
        TelemetryConfig(daily_byte_budget=10)
