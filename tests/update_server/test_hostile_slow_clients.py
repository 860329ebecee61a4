"""Issue 13 item 2: slow and idle clients cannot starve the embedded server.

A real ``edgepkg-server run`` (gunicorn, default worker class) on a free port; 40 sockets
trickle request headers, 16 trickle a POST body and 200 sit idle; ``/healthz`` and a signed
device check-in must each still answer within 1 s. Bounded: everything stops within ~20 s.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from update_server.testing import SoftwareDevice

SLOW_HEADERS = 40
SLOW_BODIES = 16
IDLE = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(config: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "update_server", "--config", str(config), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, str]]:
    config = tmp_path / "server.toml"
    config.write_text(
        f'database_url = "sqlite:///{tmp_path / "db.sqlite"}"\n'
        f'repo_dir = "{tmp_path}"\nsecret_key = "slow-client-test"\n'
    )
    _cli(config, "migrate")
    token = json.loads(_cli(config, "--json", "create-enrollment"))["token"]
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "update_server",
            "--config",
            str(config),
            "run",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--no-access-log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                pytest.fail(f"edgepkg-server run did not start: {err}")
            time.sleep(0.2)
        yield port, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _timed(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, float]:
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - t0
    finally:
        conn.close()


class Attackers:
    """Slow-header, slow-body and idle sockets, trickled by one thread until ``stop()``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.slow: list[socket.socket] = []
        self.idle: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def _connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        s.setblocking(False)
        return s

    def start(self) -> None:
        for _ in range(SLOW_HEADERS):
            s = self._connect()
            s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            self.slow.append(s)
        for _ in range(SLOW_BODIES):
            s = self._connect()
            s.send(
                b"POST /api/v1/enroll HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            )
            self.slow.append(s)
        for _ in range(IDLE):
            self.idle.append(self._connect())
        self._thread.start()

    def _trickle(self) -> None:
        n = 0
        while not self._stop.wait(0.5):
            n += 1
            for s in self.slow:
                try:  # one more header line, or one more body byte
                    s.send(f"X-Slow-{n}: 1\r\n".encode() if s in self.slow[:SLOW_HEADERS] else b" ")
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for s in self.slow + self.idle:
            s.close()


def test_slow_and_idle_clients_do_not_starve_health_or_devices(
    server: tuple[int, str],
) -> None:
    port, token = server
    dev = SoftwareDevice()
    status, _ = _timed(
        port, "POST", "/api/v1/enroll", dev.enroll_body(token), {"Content-Type": "application/json"}
    )
    assert status == 201
    attackers = Attackers(port)
    attackers.start()
    try:
        time.sleep(1.0)  # let the server accept them all and the trickle begin
        for _ in range(3):
            status, took = _timed(port, "GET", "/healthz")
            assert status == 200 and took < 1.0, took
            path = f"/api/v1/devices/{dev.device_id}/checkin"
            body = json.dumps({"state": "idle"}).encode()
            status, took = _timed(port, "POST", path, body, dev.signed_headers("POST", path, body))
            assert status == 200 and took < 1.0, took
    finally:
        attackers.stop()
