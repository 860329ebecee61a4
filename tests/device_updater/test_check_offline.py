"""``edge-updater check`` says why it could not reach the server, and exits 1.

A real (file-keystore) enrolled device and real sockets: a closed port, a server answering 503,
a plain-HTTP server spoken to over TLS, and one that accepts but never answers.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from device_updater.cli import main
from device_updater.keystore import FileKeystore, device_id


class _Unavailable(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = b'{"error": {"code": "unavailable", "message": "maintenance"}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_a: object) -> None:
        pass


@contextlib.contextmanager
def _http_503() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextlib.contextmanager
def _closed_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@contextlib.contextmanager
def _silent() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)  # the kernel accepts; nobody ever answers
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def _device(tmp_path: Path, url: str) -> Path:
    keys = tmp_path / "keys"
    ks = FileKeystore(keys)
    ks.ensure_device_key()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "enrollment.json").write_text(json.dumps(
        {"device_id": device_id(ks), "server_url": url, "poll_interval": 60}))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[server]
url = "{url}"
connect_timeout = 2
read_timeout = 1
[device]
state_dir = "{state}"
runtime_dir = "{tmp_path / 'run'}"
[keystore]
type = "file"
dir = "{keys}"
""")
    return cfg


@pytest.mark.parametrize(("server", "scheme", "said"), [
    (_closed_port, "http", "connection refused"),
    (_http_503, "http", "server error (HTTP 503"),
    (_http_503, "https", "TLS handshake failed"),
    (_silent, "http", "timed out waiting for the server's answer"),
], ids=["refused", "http-503", "tls", "timeout"])
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_check_says_why_the_server_was_not_reached(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], server: object, scheme: str,
        said: str, as_json: bool) -> None:
    with server() as port:  # type: ignore[operator]
        cfg = _device(tmp_path, f"{scheme}://127.0.0.1:{port}")
        rc = main(["-c", str(cfg), "check", *(["--json"] if as_json else [])])
    out = capsys.readouterr().out
    assert rc == 1
    assert "cannot reach the update server" in out and said in out, out
    if as_json:
        doc = json.loads(out)
        assert doc["online"] is False
        assert any(said in e for e in doc["errors"]), doc
