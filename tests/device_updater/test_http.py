"""The device's signed HTTP client against the real update server (SQLite, served in a thread),
plus its handling of hostile or broken answers from a tiny local server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from device_updater.errors import TransportError
from device_updater.http import (
    BadResponseError,
    DeviceAuth,
    DeviceClient,
    ServerRefusedError,
    enroll,
)
from device_updater.keystore import FileKeystore, device_id, device_public_key_pem
from edgepkg.errors import ProtocolError
from edgepkg.keys import verify_signature
from edgepkg.protocol import parse_assignment, signing_string


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    from werkzeug.serving import make_server

    from update_server import schema
    from update_server.app import create_app
    from update_server.config import load_config
    from update_server.db import get_db

    tmp = tmp_path_factory.mktemp("srv")
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    schema.upgrade(url)
    app = create_app(load_config(env={}, database_url=url, poll_interval=77, testing=True,
                                 repo_dir=str(tmp), secret_key="s"))
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", app
    httpd.shutdown()
    get_db(app).dispose()


def _token(app: Any) -> str:
    from update_server.auth import create_enrollment_token
    from update_server.db import get_db

    with app.app_context(), get_db(app).session() as s:
        return create_enrollment_token(s)[1]


def _enrolled(server: tuple[str, Any], tmp_path: Path) -> tuple[DeviceClient, FileKeystore]:
    url, app = server
    ks = FileKeystore(tmp_path / "ks")
    ks.ensure_device_key()
    res = enroll(url, _token(app), device_public_key_pem(ks), {"platform": "test"}, ["lab"])
    assert res.device_id == device_id(ks) and res.poll_interval == 77
    return DeviceClient(url, DeviceAuth(res.device_id, ks.sign)), ks


REPORT = {"models": {}, "state": "idle", "health": {"latency_p50_ms": None,
          "latency_p95_ms": None, "errors": 0, "last_metric": None},
          "free_disk_bytes": 10**9, "last_error": None, "facts": {"platform": "test"}}


def test_signed_checkin_and_events_are_accepted_idempotently(server: tuple[str, Any],
                                                             tmp_path: Path) -> None:
    client, _ = _enrolled(server, tmp_path)
    answer = client.checkin(REPORT)
    assert answer.poll_interval == 77 and answer.assignments == []
    ev = {"id": "0b6f1c9e-6a4e-4a57-9d0b-5f2f7f0b7a11", "type": "download_started",
          "time": "2026-01-01T00:00:00.000Z", "model": "m", "version": "1.0.0",
          "rollout_id": None, "details": {}}
    assert client.post_events([ev]) == (1, 0)
    assert client.post_events([ev]) == (0, 1)


def test_enrollment_token_is_single_use(server: tuple[str, Any], tmp_path: Path) -> None:
    url, app = server
    token = _token(app)
    a, b = FileKeystore(tmp_path / "a"), FileKeystore(tmp_path / "b")
    a.ensure_device_key()
    b.ensure_device_key()
    enroll(url, token, device_public_key_pem(a), {}, [])
    with pytest.raises(ServerRefusedError) as err:
        enroll(url, token, device_public_key_pem(b), {}, [])
    assert err.value.status == 401


def test_request_signed_by_another_key_is_refused(server: tuple[str, Any], tmp_path: Path) -> None:
    client, _ = _enrolled(server, tmp_path)
    thief = FileKeystore(tmp_path / "thief")
    thief.ensure_device_key()
    forged = DeviceClient(client.server_url, DeviceAuth(client.auth.device_id, thief.sign))
    with pytest.raises(ServerRefusedError) as err:
        forged.checkin(REPORT)
    assert err.value.status == 401


def test_stale_timestamp_is_refused(server: tuple[str, Any], tmp_path: Path) -> None:
    client, ks = _enrolled(server, tmp_path)
    old = DeviceClient(client.server_url,
                       DeviceAuth(client.auth.device_id, ks.sign, clock=lambda: 1_000_000.0))
    with pytest.raises(ServerRefusedError) as err:
        old.checkin(REPORT)
    assert err.value.status == 401


def test_signature_covers_method_path_time_nonce_and_body(tmp_path: Path) -> None:
    ks = FileKeystore(tmp_path / "ks")
    pub = ks.ensure_device_key()
    auth = DeviceAuth("d" * 64, ks.sign, clock=lambda: 1700000000.0)
    h = auth.headers("POST", "http://x/api/v1/devices/d/checkin?a=1", b'{"k":1}')
    import base64

    msg = signing_string("POST", "/api/v1/devices/d/checkin?a=1", 1700000000,
                         h["X-Edgepkg-Nonce"], b'{"k":1}')
    assert msg.startswith(b"EDGEPKG-DEVICE-V1\nPOST\n/api/v1/devices/d/checkin?a=1\n1700000000\n")
    verify_signature(pub, base64.b64decode(h["X-Edgepkg-Signature"]), msg)
    assert h["X-Edgepkg-Nonce"] != auth.headers("POST", "http://x/", b"")["X-Edgepkg-Nonce"]


def test_unreachable_server_is_a_transport_error(tmp_path: Path) -> None:
    ks = FileKeystore(tmp_path / "ks")
    ks.ensure_device_key()
    client = DeviceClient("http://127.0.0.1:9", DeviceAuth("d" * 64, ks.sign), timeout=(1, 1))
    with pytest.raises(TransportError):
        client.checkin(REPORT)


class _Hostile:
    """A local server answering every request with a fixed status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        outer = self
        self.status, self.body = status, body

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def client(self, ks: FileKeystore) -> DeviceClient:
        return DeviceClient(self.url, DeviceAuth("d" * 64, ks.sign))


@pytest.mark.parametrize(("status", "body", "error"), [
    (200, b"x" * (2 << 20), BadResponseError),          # endless data
    (200, b"not json", BadResponseError),
    (200, b'{"poll_interval": -5, "assignments": []}', BadResponseError),
    (200, b'{"poll_interval": 60, "assignments": [{"action": "run"}]}', BadResponseError),
    (503, b"busy", TransportError),
    (403, b'{"error": {"code": "forbidden", "message": "disabled"}}', ServerRefusedError),
])
def test_hostile_or_broken_answers_get_typed_errors(tmp_path: Path, status: int, body: bytes,
                                                    error: type[Exception]) -> None:
    ks = FileKeystore(tmp_path / "ks")
    ks.ensure_device_key()
    srv = _Hostile(status, body)
    try:
        with pytest.raises(error):
            srv.client(ks).checkin(REPORT)
    finally:
        srv.httpd.shutdown()


def test_assignment_parser_checks_shape() -> None:
    """The device parses assignments with the contract's parser (ProtocolError names the field;
    the client maps it to BadResponseError at the HTTP edge, see the hostile-answer cases)."""
    a = parse_assignment({"action": "install", "model": "m", "version": "1.0.0",
                          "target": "models/m/1.0.0/m-1.0.0.edgepkg", "delta_target": None,
                          "rollout_id": "r1", "allow_downgrade": False})
    assert a.model == "m" and a.rollout_id == "r1"
    with pytest.raises(ProtocolError):
        parse_assignment({"action": "install", "model": "m", "version": "1.0.0", "target": "t",
                          "allow_downgrade": "yes"})
