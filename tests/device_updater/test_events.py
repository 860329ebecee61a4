"""Persistent event queue: ordered, acked by id, bounded, survives SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device_updater.errors import EventQueueError
from device_updater.events import EventQueue, make_event

NOW = 1_800_000_000.0


def ev(i: int) -> dict:
    return make_event("download_started", now=NOW + i, model="cam", version=f"1.0.{i}",
                      rollout_id="r1", details={"i": i})


def test_events_come_back_in_order_until_acked(tmp_path: Path) -> None:
    q = EventQueue(tmp_path / "q")
    ids = [q.append(ev(i)) for i in range(5)]
    got = EventQueue(tmp_path / "q").pending(3)
    assert [e["id"] for e in got] == ids[:3]
    assert got[0]["time"] == "2027-01-15T08:00:00.000Z" and got[0]["details"] == {"i": 0}
    assert q.ack(ids[:3]) == 3
    assert [e["id"] for e in q.pending()] == ids[3:]
    assert q.ack(["not-there"]) == 0


def test_queue_is_bounded_and_reports_dropped_events(tmp_path: Path) -> None:
    q = EventQueue(tmp_path / "q", max_events=3)
    for i in range(5):
        q.append(ev(i))
    pending = q.pending()
    assert [e["details"]["i"] for e in pending] == [2, 3, 4]
    # ev3 was appended while ev0 was dropped; ev4 carries that count, ev1 dropped after it.
    assert pending[-1]["details"] == {"i": 4, "dropped_events": 1} and q.dropped == 1
    q.ack([e["id"] for e in pending])
    q.append(ev(5))
    assert q.pending()[-1]["details"] == {"i": 5, "dropped_events": 1} and q.dropped == 0


@pytest.mark.parametrize("bad", [
    {"type": "exploded"},
    {"type": "installed", "id": "x", "time": "t"},
    {"type": "installed", "id": "5b0b4a3e-1f5c-4c1e-9a57-3a1c1c8e2f11", "time": 3},
    {"type": "installed", "id": "5b0b4a3e-1f5c-4c1e-9a57-3a1c1c8e2f11", "time": "t",
     "details": {"blob": "x" * 40_000}},
    {"type": "installed", "id": "5b0b4a3e-1f5c-4c1e-9a57-3a1c1c8e2f11", "time": "t",
     "details": {"obj": object()}},
])
def test_malformed_events_are_refused(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(EventQueueError):
        EventQueue(tmp_path / "q").append(bad)


def test_unreadable_event_file_is_skipped(tmp_path: Path) -> None:
    q = EventQueue(tmp_path / "q")
    q.append(ev(0))
    (tmp_path / "q" / "00000000000000000099-5b0b4a3e-1f5c-4c1e-9a57-3a1c1c8e2f11.json") \
        .write_bytes(b"{garbage")
    assert [e["details"]["i"] for e in q.pending()] == [0]


_WRITER = """
import sys, time
from device_updater.events import EventQueue, make_event
q = EventQueue(sys.argv[1], max_events=50)
i = 0
while True:
    q.append(make_event("installed", now=time.time(), model="m", version="1.0.0",
                        details={"i": i}))
    print(i, flush=True)
    i += 1
"""


def test_queue_survives_sigkill_at_random_instants(tmp_path: Path, repo_root: Path) -> None:
    qdir = tmp_path / "q"
    kills = 0
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31, 0.37):
        p = subprocess.Popen([sys.executable, "-c", _WRITER, str(qdir)], stdout=subprocess.PIPE,
                             cwd=repo_root)
        time.sleep(delay + 0.3)  # interpreter start-up, then some appends
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        q = EventQueue(qdir, max_events=50)
        events = q.pending(1000)
        assert all(e["type"] == "installed" for e in events)  # every file is a whole event
        assert len(events) <= 50
    q = EventQueue(qdir, max_events=50)
    q.append(ev(1))  # still writable, stray temp files cleaned
    assert not [p for p in qdir.iterdir() if p.name.endswith(".tmp")]
    assert kills == 6
