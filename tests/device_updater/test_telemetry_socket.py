"""The local API end to end: a real Unix socket in the daemon, the real client, and
``edge-updater report-health --record``."""

from __future__ import annotations

import json
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_updater.telemetry.client import TelemetryClient
from device_updater.telemetry.records import Feedback, Inference, Record
from device_updater.telemetry.server import TelemetrySocketServer


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~108 bytes: pytest's tmp_path can be longer.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tel") as d:
        yield Path(d)


def _wait(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_client_records_reach_the_daemon(sock_dir: Path) -> None:
    got: list[Record] = []
    server = TelemetrySocketServer(sock_dir / "telemetry.sock", got.append)
    server.start()
    try:
        mode = stat.S_IMODE((sock_dir / "telemetry.sock").stat().st_mode)
        assert mode == 0o660
        client = TelemetryClient(str(sock_dir / "telemetry.sock"))
        client.inference("clf", latency_ms=2.5, prediction=3, confidence=0.8,
                         features=[0.1, 0.2], prediction_id="r1")
        client.feedback("r1", label=3)
        assert client.flush()
        _wait(lambda: len(got) == 2)
        assert got[0] == Inference(model="clf", latency_ms=2.5, prediction=3, confidence=0.8,
                                   features=(0.1, 0.2), prediction_id="r1")
        assert got[1] == Feedback(prediction_id="r1", label=3)
    finally:
        server.stop()
    assert not (sock_dir / "telemetry.sock").exists()


def test_bad_oversized_and_excess_records_are_dropped_and_counted(sock_dir: Path) -> None:
    got: list[Record] = []
    server = TelemetrySocketServer(sock_dir / "t.sock", got.append, max_records_per_s=5)
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(sock_dir / "t.sock"))
            s.sendall(b"not json\n" + b'{"type":"inference","model":"' + b"x" * 20000
                      + b'"}\n')
            good = json.dumps({"type": "inference", "model": "clf"}).encode() + b"\n"
            s.sendall(good * 40)
        _wait(lambda: server.stats.accepted + server.stats.rate_limited >= 40)
        assert server.stats.malformed == 1 and server.stats.oversized == 1
        assert server.stats.rate_limited > 0 and server.stats.accepted <= 11
        assert len(got) == server.stats.accepted
    finally:
        server.stop()


def test_the_client_never_raises_and_buffers_while_the_daemon_is_down(sock_dir: Path) -> None:
    client = TelemetryClient(str(sock_dir / "absent.sock"), max_buffer=3, retry_s=0)
    for i in range(5):
        client.inference("clf", latency_ms=float(i))
    client.send({"type": "inference", "model": "clf", "latency_ms": float("nan")})
    assert client.dropped == 3 and not client.flush()  # 2 evicted + 1 unencodable
    got: list[Record] = []
    server = TelemetrySocketServer(sock_dir / "absent.sock", got.append)
    server.start()
    try:
        assert client.flush()
        _wait(lambda: len(got) == 3)
        assert [r.latency_ms for r in got] == [2.0, 3.0, 4.0]  # type: ignore[union-attr]
    finally:
        server.stop()


def test_report_health_sends_records_to_the_daemon(sock_dir: Path, tmp_path: Path) -> None:
    from device_updater.cli import main

    got: list[Record] = []
    server = TelemetrySocketServer(sock_dir / "t.sock", got.append)
    server.start()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[server]\nurl = "http://x"\n[device]\nstate_dir = "{tmp_path}/s"\n'
                   f'[keystore]\ntype = "file"\ndir = "{tmp_path}/k"\n'
                   f'[telemetry]\nsocket = "{sock_dir}/t.sock"\n')
    try:
        rec = '{"type":"accuracy","model":"clf","labelled":10,"correct":9}'
        assert main(["--config", str(cfg), "report-health", "--record", rec]) == 0
        _wait(lambda: len(got) == 1)
        assert main(["--config", str(cfg), "report-health", "--record", '{"type":"x"}']) == 1
        assert main(["--config", str(cfg), "report-health"]) == 2
    finally:
        server.stop()
    assert main(["--config", str(cfg), "report-health", "--record", rec]) == 1  # daemon down
